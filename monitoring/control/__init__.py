"""The control plane's API and scheduler: `tuneloop control` (health, metrics, alert webhook, loop)."""

from tuneloop.monitoring.control.app import create_app
from tuneloop.monitoring.control.loop import Scheduler, consider_retrain, drift_check

__all__ = ["Scheduler", "consider_retrain", "create_app", "drift_check"]
