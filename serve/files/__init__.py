"""POST/GET/DELETE /v1/files: training data uploaded for fine-tuning, kept in the artifact store."""
