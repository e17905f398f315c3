"""Tests of avatarcast.engines: the tiny and wan engines, backends, the avatar world, the errors."""
