"""Notifiers: where the pipeline's messages for people go (task log and file, or a webhook)."""
