"""Training: one trainer for every model (CTC), checkpoints, DDP, MLflow tracking."""
