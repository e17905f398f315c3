"""The benchmarks `avatarcast bench` runs: engine (engine.py; the Wan 5B GPU benchmark in wan.py), latency
(latency.py, a client of a real server) and load (load.py); clips.py makes an espeak-ng clip set."""
