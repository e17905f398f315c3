"""avatarcast on Ray Serve: the gateway (sockets, sessions, ASR, emotion) and the engine replicas
(model + batching scheduler) as Serve deployments. Imported only with the `ray` extra installed.

- wire.py: what one chunk request and its reply carry between the gateway and a replica;
- replica.py: the engine replica deployment (an EngineScheduler per replica batches its sessions);
- remote.py: RemoteScheduler, the EngineScheduler surface the Hub uses, sending chunks to replicas;
- app.py: the gateway deployment and the application builder (`avatarcast.realtime.cluster.app:app_builder`);
- launch.py: `avatarcast serve --ray` on a local (or given) Ray cluster.
"""
