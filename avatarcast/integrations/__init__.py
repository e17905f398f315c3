"""Adapters for frameworks that build on avatarcast's client (each needs its own extra; nothing else imports them)."""
