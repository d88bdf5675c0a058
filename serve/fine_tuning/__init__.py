"""/v1/fine_tuning/jobs: OpenAI fine-tuning jobs run as Ray jobs of the training recipe."""
