"""Tests of avatarcast.templates: emotion templates and the latents cache."""
