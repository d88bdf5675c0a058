"""Training jobs the way users run them: a job folder with its spec and a colours task, submitted to a
real Ray head with `ray job submit` (or run here), and what came of it.

`killed_once` is the job most recipe tests share: 18 LoRA steps on 2 workers whose last worker exits
at step 8 of its first attempt, so Ray Train resumes the group from the step-6 checkpoint.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from helpers.servers import RAY_CLI, RayHead
from tuneloop.platform.artifacts import ArtifactStore
from tuneloop.platform.registry import Registry
from tuneloop.platform.registry.tables import Job
from tuneloop.platform.settings import child_env

TUNELOOP = str(Path(sys.executable).with_name("tuneloop"))
COLOURS = ["red", "green", "blue", "yellow"]
ANIMALS = [
    "cat",
    "dog",
    "fox",
    "owl",
    "bee",
    "cow",
    "pig",
    "hen",
    "ant",
    "bat",
    "elk",
    "yak",
    "eel",
    "ram",
    "emu",
]


def colour_rows(chat: bool) -> list[dict[str, Any]]:
    """60 questions whose answers are one of four colours: a tiny model learns the answer format fast."""
    rows = []
    for i, animal in enumerate(ANIMALS):
        for j in range(4):
            question, answer = f"What colour is the {animal} number {j}?", COLOURS[(i + j) % 4]
            if chat:
                turns = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
                rows.append({"messages": turns})
            else:
                rows.append({"prompt": f"Question: {question}\nAnswer:", "completion": f" {answer}"})
    return rows


@dataclass
class Finished:
    """A `tuneloop train` job that ran on the Ray head, and where it left its results."""

    submission_id: str
    workdir: Path
    returncode: int
    log: str
    registry: Registry
    store: ArtifactStore
    seconds: float

    def job(self) -> Job:
        return self.registry.get_job(self.submission_id)

    def events(self) -> list[str]:
        return [event.kind for event in self.registry.job_events(self.submission_id)]


def write_job(folder: Path, model_dir: Path, *, chat: bool = False, **spec: Any) -> Path:
    """A working dir with data.jsonl and job.yaml (the spec: defaults below, overridden by `spec`)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in colour_rows(chat)))
    body: dict[str, Any] = {
        "base_model": str(model_dir),
        "method": {"name": "lora", "rank": 8},
        "task": "sft",
        "data": {"train": "data.jsonl", "max_length": 64},
        "hyperparameters": {"learning_rate": 0.01, "batch_size": 4, "max_steps": 12, "eval_every": 4},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1, "max_failures": 1},
        "output": {"adapter": "colours"},
    }
    body.update(spec)
    (folder / "job.yaml").write_text(
        "# ray job submit --working-dir . -- tuneloop train job.yaml\n"
        + yaml.safe_dump(body, sort_keys=False)
    )
    return folder


def submit(
    ray_head: RayHead, workdir: Path, state: Path, extra_env: dict[str, str] | None = None
) -> Finished:
    """`ray job submit ... -- tuneloop train job.yaml`, waiting for the end (the CLI tails the log)."""
    env_vars = {
        "TUNELOOP_HOME": str(state),
        "TUNELOOP_DB_URL": f"sqlite:///{state / 'registry.db'}",
        "TUNELOOP_ARTIFACTS": str(state / "artifacts"),
        **(extra_env or {}),
    }
    submission_id = f"train-test-{uuid.uuid4().hex[:8]}"
    argv = [
        RAY_CLI, "job", "submit", "--address", ray_head.address, "--submission-id", submission_id,
        "--working-dir", str(workdir), "--runtime-env-json", json.dumps({"env_vars": env_vars}),
        "--", "tuneloop", "train", "job.yaml",
    ]  # fmt: skip
    started = time.monotonic()
    out = subprocess.run(argv, env=child_env(ray_head.env), capture_output=True, text=True, timeout=600)
    return Finished(
        submission_id=submission_id,
        workdir=workdir,
        returncode=out.returncode,
        log=out.stdout + out.stderr,
        registry=Registry(env_vars["TUNELOOP_DB_URL"]),
        store=ArtifactStore(env_vars["TUNELOOP_ARTIFACTS"]),
        seconds=time.monotonic() - started,
    )


def run_here(workdir: Path, state: Path) -> Finished:
    """`tuneloop train job.yaml` as a plain command in `workdir`, with no Ray cluster to join."""
    # Ray starts workers through bash: the system folders stay on PATH.
    path = f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"
    env = {"PATH": path, "HOME": str(state.parent), "TUNELOOP_HOME": str(state)}
    started = time.monotonic()
    out = subprocess.run(
        [TUNELOOP, "train", "job.yaml"], cwd=workdir, env=env, capture_output=True, text=True, timeout=600
    )
    log = out.stdout + out.stderr
    registry = Registry(f"sqlite:///{state / 'registry.db'}")
    job_ids = [line.split()[1].rstrip(":") for line in out.stdout.splitlines() if line.startswith("job ")]
    return Finished(
        submission_id=job_ids[0] if job_ids else "",
        workdir=workdir,
        returncode=out.returncode,
        log=log,
        registry=registry,
        store=ArtifactStore(str(state / "artifacts")),
        seconds=time.monotonic() - started,
    )


def killed_once(
    ray_head: RayHead, root: Path, model_dir: Path, strategy: str, **hyperparameters: Any
) -> Finished:
    """An 18-step LoRA job on 2 workers whose last worker exits at step 8 of its first attempt."""
    workdir = write_job(
        root / "job",
        model_dir,
        chat=True,
        hyperparameters={
            "learning_rate": 0.01,
            "batch_size": 4,
            "max_steps": 18,
            "eval_every": 6,
            "schedule": "cosine",
            "warmup_steps": 2,
            **hyperparameters,
        },
        scaling={"num_workers": 2, "cpus_per_worker": 1, "max_failures": 2, "strategy": strategy},
    )
    finished = submit(ray_head, workdir, root / "state", {"TUNELOOP_TEST_WORKER_EXIT_AT_STEP": "8"})
    print(f"\nLoRA job ({strategy}) on 2 workers, one killed once: {finished.seconds:.1f} s submit-to-finish")
    assert finished.returncode == 0, finished.log[-6000:]
    return finished
