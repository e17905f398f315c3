"""Tests of avatarcast.realtime: server, sessions, transports, ASR, emotion, scheduling, benches."""
