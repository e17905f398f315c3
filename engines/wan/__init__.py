"""The `wan` engine: Wan2.2-TI2V-5B (diffusers) streamed chunk by chunk."""

from avatarcast.engines.wan.checkpoint import CheckpointInfo, WanCheckpointError, inspect_checkpoint

__all__ = ["CheckpointInfo", "WanCheckpointError", "inspect_checkpoint"]
