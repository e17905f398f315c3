"""One settings object for the whole process, built from CLI flags, AVATARCAST_* variables and a TOML file.

Precedence: explicit CLI flag > environment variable > config file (--config or AVATARCAST_CONFIG;
realtime/settings_file.py) > default. The fields are declared here, flat, as the code reads them; the nested
pydantic-settings model that groups and types them ([engine], [wan], [asr] ...) is realtime/settings_model.py.
Nothing else in the project reads the environment: it receives a Settings (or the values it needs) from its caller.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from avatarcast.engines.sampler import FlowMatchEulerSampler, warped_sigmas
from avatarcast.engines.tiny.motion_weights import CUTOUT_DRAW, auto_draw, cutout_runs_on, torch_on_cuda
from avatarcast.engines.wan.checkpoint import WanCheckpointError, inspect_checkpoint
from avatarcast.realtime import settings_file, settings_model
from avatarcast.realtime.ice import IceConfigError, IceServers
from avatarcast.realtime.settings_file import SettingsFileError
from avatarcast.realtime.settings_model import SettingsError
from avatarcast.vocabulary import DEFAULT_AVATAR, IMAGE_FORMATS

ENV_PREFIX = "AVATARCAST_"
SWITCHES = ("ray",)  # 0/1 fields whose flag may stand alone
REPEATED = {"ice_servers": "ice-server"}  # list fields: a flag per item (--ice-server URL ...); the env var lists them


class SettingValueError(SettingsError):
    """A value the rules refuse; `names` are the settings it is about (validate() says where each came from)."""

    def __init__(self, message: str, *names: str) -> None:
        super().__init__(message)
        self.names = names


# the engines a server can run: architecture 2 (shipped weights; the GPU backends' default), Wan2.2 on a GPU, and
# architecture 3 (engines/tiny/motion_engine.py; the CPU's default) from a folder that tools.export_motion wrote
ENGINES = ("tiny", "wan", "motion")
AUTO = "auto"  # the engine setting's default: default_engine() picks one for the backend and device
AUTO_DRAW = "auto"  # --motion-draw: the cut-out draw where it is fastest (numpy on the CPU, Triton on CUDA), else copy
ADAPTIVE_DRAW = "adaptive"  # --motion-draw: the residual draw with room, the copy draw under load (motion_folder_draw)


def motion_serves_on(backend: str, device: str) -> bool:
    """Whether the motion engine can serve on this backend and device: onnxruntime on the CPU, or torch on the CPU
    or CUDA (the folder's graphs read back into torch networks: engines/tiny/motion_graph_weights.py)."""
    return (backend == "onnxruntime" and device in ("auto", "cpu")) or backend == "torch"


def default_engine(backend: str, device: str) -> str:
    """The engine `--engine auto` (the default) serves on this backend and device: motion where its picture is the
    crisp one and it keeps up: on onnxruntime on the CPU (two streams on two cores; README, "Which engine") and on
    torch on CUDA (the cut-out draw as Triton's kernels, two calls in flight, the host's planning in worker
    processes: through the server's scheduler on an H100, 6,105 fps with 800 sessions and 7,395 with 1,000, where
    tiny, the smudged picture, gave 1,088 with 800; the whole server's reaction time p95 248 / 277 ms in clip mode;
    docs/bench/motion_server_gpu_2026-12-07). tiny elsewhere: torch on the CPU, tensorrt, onnxruntime on CUDA."""
    on_cpu = backend == "onnxruntime" and motion_serves_on(backend, device)
    return "motion" if on_cpu or (backend == "torch" and torch_on_cuda(device)) else "tiny"


# what `--engine auto` means, for --help and the start-up log: default_engine's cases in words
# (tests/realtime/test_settings_file.py checks this text and each case)
AUTO_ENGINE_HELP = (
    "auto: motion on onnxruntime on the CPU and on torch on CUDA; tiny elsewhere (torch on the CPU, tensorrt, "
    "onnxruntime on CUDA)"
)


@dataclass
class Settings:
    """Process-wide settings; every field is also AVATARCAST_<FIELD> and --<field>."""

    # auto | tiny | wan | motion (its shipped folder, or --weights DIR); auto is resolved at construction
    # (__post_init__), so the code reads the engine that serves, and an explicit choice always wins
    engine: str = AUTO
    backend: str = "onnxruntime"
    steps: int = 2
    threads: int = 0  # 0 = all cores
    device: str = "auto"  # auto | cpu | cuda
    weights: str = ""  # empty = the shipped weights
    # engine=motion: how its motions are drawn. "cutout": the avatar's layers (drawn once per avatar) moved part by
    # part, no decoder network, in numpy beside onnxruntime or on torch's device (engines/tiny/cutout.py,
    # cutout_torch.py; the truest picture: docs/training/motion.md, "The cut-out draw"); "auto", the default:
    # motion_weights.auto_draw (cutout on onnxruntime, the CPU, and on torch on CUDA with Triton; else the copy
    # decoder on torch). The decoder networks of the shipped folders: "copy" (moves the avatar's canonical frame) or
    # "residual" (also draws a correction over it, for about 1.7x the CPU a frame;
    # engines/tiny/motion_weights.SHIPPED_DRAWS), or "adaptive": the residual draw while the engine has room for it,
    # the copy draw (the ladder's cheaper rung) under load, and sessions
    # admitted as the copy draw admits them (realtime/admission.py; docs/bench/adaptive_draw_2026-12-06); with
    # --weights DIR, that folder's decoder (capacity counted at its cheaper draw where its manifest names one), or
    # its denoiser with "cutout"
    motion_draw: str = AUTO_DRAW
    # the wan engine (engines/wan/): a local diffusers-format Wan2.2-TI2V checkpoint directory
    checkpoint: str = ""  # required with --engine wan: transformer/, vae/ (+ text_encoder/, tokenizer/)
    wan_dtype: str = "auto"  # auto (bfloat16 on cuda, float32 on cpu) | float32 | bfloat16 | float16
    wan_chunk_latents: int = 1  # latent frames per chunk (4 video frames each)
    wan_context_latents: int = 1  # latent frames each chunk continues from
    wan_height: int = 352  # the model's pixel grid (352x640: 22x40 latents); frames are scaled/padded to 640x360
    wan_width: int = 640
    wan_shift: float = 5.0  # flow-matching schedule shift
    # a distilled checkpoint's own schedule, instead of --steps evenly spaced (either, not both):
    wan_sigmas: str = ""  # comma-separated sigmas, strictly decreasing in (0, 1], e.g. 1,0.9375,0.8333,0.625
    wan_timesteps: str = ""  # a DMD model's denoising_step_list, e.g. 1000,750,500,250: warped by --wan-shift
    wan_compile: int = 0  # 1: torch.compile transformer + VAE on the GPU (minutes cold; cached on disk after)
    # regional: the transformer's 30 repeated blocks share one compiled graph per batch (H100: cold start 237 s
    # against 449-496 s, 1.2 s per graph warm) | full: the whole transformer
    wan_compile_mode: str = "regional"
    # with --wan-compile 1: start (the VAE's graphs compile before the server is ready) | background (ready
    # without it: 37.5 s against 42.3 s on an H100 warm, full speed at 42.9 s; steady frames decode eagerly until then)
    wan_vae_warmup: str = "start"
    wan_batch: int = 5  # most streams per engine call (the scheduler's batch; 10 streams: two calls of 5)
    # most streams per VAE decoder call: the decode is compute-bound (H100: 7.27 ms a frame at 1, 7.13 at 5), and
    # 1 keeps the compiled VAE to one static graph (a faster start than graphs for batch 1, 2 and 3+)
    wan_vae_batch: int = 1
    wan_fp8: int = 0  # 1: fp8 linear layers in the transformer blocks (Hopper or newer; check your checkpoint's frames)
    # 1: two engine calls in flight, one's VAE decode overlapping the next one's steps (H100: 10 real-time streams,
    # 80.5-83.6 fps, against 9 in turn) | 0: calls in turn
    wan_pipeline: int = 1
    # torch | tensorrt | onnxruntime: the transformer and the VAE's steady frame as exported graphs
    # (python -m avatarcast.engines.wan.export ... --out DIR, then --wan-export-dir DIR; engines built and cached on
    # first use)
    wan_backend: str = "torch"
    wan_export_dir: str = ""
    wan_prompt_embeds: str = (
        "auto"  # auto: stored in the cache dir, or computed by the text encoder | random (benchmarks)
    )
    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "info"
    log_format: str = "text"  # text | json (one object per line, with the session id as a field)
    malloc_tune: int = 1  # 1: glibc's allocator set to give memory back (realtime/allocator.py); 0: its defaults
    asr_model: str = "base"  # base (multilingual) | tiny.en (English only) | a CTranslate2 model directory
    language: str = ""  # empty or auto: detected per utterance (en for tiny.en); a session may set its own
    asr_languages: str = "en,zh"  # what detection chooses among (comma list of Whisper codes); empty: any
    asr_device: str = "cpu"  # cpu | cuda: where Whisper runs (CTranslate2)
    asr_threads: int = 2  # CPU threads per Whisper call
    # Whisper calls at once (1: sessions take turns; 2 x 1 thread is not yet measured quietly: docs/speech.md)
    asr_workers: int = 1
    avatars: str = DEFAULT_AVATAR  # comma list warmed (loops + latents cache) at start-up
    precompute: int = 1  # 1: fill the latents cache of the start-up avatars before serving
    cache_dir: str = ""  # latents cache; empty = ~/.cache/avatarcast/latents
    clip_cache_dir: str = ""  # rendered clips; empty = ~/.cache/avatarcast/clips
    image_format: str = "jpeg"  # default WebSocket frame format: jpeg | webp (keeps alpha)
    quality: int = 80  # JPEG/WebP quality
    max_sessions: int = 8
    max_clip_bytes: int = 20_000_000
    max_clip_seconds: float = 30.0
    max_audio_backlog_s: float = 5.0  # live audio queued beyond this is dropped with an error
    max_message_bytes: int = 4_000_000  # largest WebSocket message accepted
    max_render_seconds: float = 30.0  # longest clip the clip API renders
    session_idle_s: float = 120.0  # a session with no client attached and no input this long is closed
    auth_secret: str = ""  # set: every /v1/ request needs a JWT signed with it (`avatarcast token`)
    allowed_origins: str = ""  # web origins (comma list, or *) that may call the API and open sockets from a browser
    # reverse proxies (comma list of IPs or CIDRs, or *) whose X-Forwarded-For / X-Forwarded-Proto name the client:
    # rate limits and logs then see the real client. Default: a proxy on this host only.
    forwarded_allow_ips: str = "127.0.0.1"
    ssl_certfile: str = ""  # serve HTTPS/WSS with this certificate (and ssl_keyfile); browsers need
    ssl_keyfile: str = ""  # a secure origin for the microphone anywhere but localhost
    # WebRTC ICE servers (realtime/ice.py), for the server's peer and handed to clients: stun:HOST[:PORT],
    # turn:HOST[:PORT][?transport=udp|tcp], turns:HOST[:PORT]?transport=tcp; USER:PASS@HOST for fixed TURN credentials
    ice_servers: str = ""  # comma or space separated; the flag is --ice-server URL, repeated
    turn_secret: str = field(default="", repr=False)  # coturn static-auth-secret: TURN credentials minted per peer
    turn_ttl_s: float = 600.0  # how long minted TURN credentials may open new allocations
    # admission control (realtime/admission.py): admit a session while the measured engine load plus
    # one more reacting stream stays under this fraction of the engine's time
    admission: int = 1  # 0: admit up to max_sessions without measuring (benchmarks, tests)
    capacity_headroom: float = 0.8  # 0..1; 1 admits up to a fully busy engine
    capacity_window_s: float = 20.0  # the engine load is measured over this many recent seconds
    ladder: int = 1  # 1: degrade under load (fewer steps, then cached loops; realtime/ladder.py)
    ladder_up_s: float = 15.0  # a degraded level steps back up after this long without late chunks
    # per-client rate limits (token buckets per IP, and per token subject with auth); 0 = off
    rate_sessions_per_min: float = 60.0  # session creations (HTTP, WebSocket, WHEP); burst 20
    rate_http_per_s: float = 50.0  # /v1/ HTTP requests; burst 2 s worth
    rate_ws_msgs_per_s: float = 200.0  # WebSocket messages per client (20 ms PCM is 50/s); burst 2 s worth
    # what one session may ask of the shared Whisper model and emotion reader over time (the pending bounds only cap
    # what waits at once): `say` texts per second, burst --max-pending-per-session; seconds of clip audio per second
    # (1: no faster than it can be spoken), burst --max-clip-seconds. 0 turns one off
    rate_say_per_s: float = 2.0
    rate_clip_audio_s_per_s: float = 1.0
    # seconds of live audio per second, burst --max-audio-backlog-s: a microphone sends 1; a little more lets a
    # client catch up after a network stall. Without it, audio pushed at 10x would be VAD-scanned and transcribed
    # (partials, finals) 10x as fast as speech, on cores every session shares
    rate_live_audio_s_per_s: float = 1.25
    # resource bounds (docs/security.md): what one client or session may hold at once
    max_json_bytes: int = 65_536  # a JSON body or WebSocket text message; over it: 413 / close 1009
    max_json_depth: int = 32  # nesting of arrays and objects; deeper: 400 too_deep / close 1008
    max_avatars: int = 16  # avatars held in memory (~100 MB each); the least recently used idle one makes room
    # new avatars clients asked for that are waiting for or in preparation (realtime/avatars.py); one per client
    max_preparing_avatars: int = 2
    max_clips_per_session: int = 2  # clips being decoded and transcribed at once; more: 429 too_many_clips
    max_pending_per_session: int = 4  # live utterances waiting for ASR, and `say` texts waiting for emotion
    max_viewers_per_session: int = 8  # sockets and WebRTC peers on one session; more: 429 / close 1013
    max_connections_per_ip: int = 32  # open connections (and sockets, by X-Forwarded-For) per client IP
    ws_idle_s: float = 60.0  # a socket that sends nothing, not even a pong, this long is closed (1008)
    header_timeout_s: float = 10.0  # a request's line and headers (or a WebSocket handshake) must arrive in this
    body_min_bytes_per_s: float = 1024.0  # a request body slower than this on average is cut (408)
    # Ray Serve (realtime/cluster/): the gateway and the engine replicas as Serve deployments
    ray: int = 0  # 1: `avatarcast serve --ray` runs on Ray Serve (a local cluster unless ray_address is set)
    ray_address: str = ""  # empty: start a local Ray cluster; "auto" or ray://host:10001: join one
    engine_replicas: int = 2  # engine replicas at start, kept within [ray_min_replicas, ray_max_replicas]
    ray_min_replicas: int = 1  # autoscaling bounds; min == max: a fixed number of replicas
    ray_max_replicas: int = 4
    ray_target_ongoing: float = 8.0  # autoscale to keep this many chunk requests in flight per replica
    ray_replica_cpus: float = 1.0  # logical CPUs one engine replica reserves
    ray_replica_gpus: float = -1.0  # GPUs one engine replica reserves; -1: 1 for GPU engines/backends, else 0
    ray_chunk_attempts: int = 4  # a chunk whose replica died is retried (from its last state) this many times
    ray_chunk_timeout_s: float = 10.0  # a chunk request unanswered this long is retried
    # gateway replicas (sockets, sessions, ASR): HTTP requests carrying the same x-session-id header reach the
    # same one; ray_max_gateways > ray_gateways autoscales them on open sockets + requests (ray_gateway_target each)
    ray_gateways: int = 1
    ray_max_gateways: int = 0  # 0: a fixed ray_gateways
    ray_gateway_target: float = 16.0
    # state the gateways share (realtime/shared_state.py): rate limits and clip renders (one render per request);
    # empty: this process's own. With several gateways, also point clip_cache_dir at a path they all mount.
    redis_url: str = ""  # redis://host:6379/0 (rediss://, unix://); needs the `cluster` extra (redis-py)
    # where clip and latents-cache artefacts also go (avatarcast/artifacts.py): a path or fsspec URL (s3://bucket/x
    # needs the `cluster` extra); empty: only clip_cache_dir and cache_dir
    artifact_url: str = ""

    def __post_init__(self) -> None:
        if self.engine == AUTO:
            self.engine = default_engine(self.backend, self.device)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, config: str | None = None) -> Settings:
        """Defaults, then the config file (`config`, else AVATARCAST_CONFIG), then AVATARCAST_* variables."""
        return cls.resolve(env=env, config=config)[0]

    @classmethod
    def resolve(
        cls, args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None, config: str | None = None
    ) -> tuple[Settings, dict[str, str]]:
        """The settings from every layer, typed by the nested model (realtime/settings_model.py), and where each
        came from (flag, env, the file; absent: default); the rules across fields are validate()'s."""
        env = os.environ if env is None else env
        path = config or getattr(args, "config", None) or env.get(ENV_PREFIX + "CONFIG")
        names = [f.name for f in fields(cls)]
        found = settings_file.read(path, cls) if path else {}
        envs = {n: env[ENV_PREFIX + n.upper()] for n in names if ENV_PREFIX + n.upper() in env}
        # a repeated flag (REPEATED) gives a list; its field holds the items space-separated
        flags = {
            n: " ".join(v) if isinstance(v, list) else v for n in names if (v := getattr(args, n, None)) is not None
        }
        values, source = settings_model.layer(
            cls,
            [
                (found, dict.fromkeys(found, f"config file {path}"), True, SettingsFileError),
                (envs, {n: f"env {ENV_PREFIX}{n.upper()}" for n in envs}, False, SettingsError),  # text, as typed
                (flags, {n: "flag --" + REPEATED.get(n, n.replace("_", "-")) for n in flags}, True, SettingsError),
            ],
        )
        return cls(**values), source

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
        """Adds --<field> flags (default None, so unset flags fall back to env, the config file and defaults)."""
        parser.add_argument(
            "--config", default=None, help=f"a TOML file of settings (env {ENV_PREFIX}CONFIG; flags and env win)"
        )
        for f in fields(cls):
            if only and f.name not in only:
                continue
            # `--ray` alone means --ray 1; --ice-server URL may be given many times
            bare: dict[str, Any] = {"nargs": "?", "const": 1} if f.name in SWITCHES else {}
            if f.name in REPEATED:
                bare = {"action": "append", "metavar": "URL"}
            table, key = settings_model.place(f.name)
            parser.add_argument(
                "--" + REPEATED.get(f.name, f.name.replace("_", "-")),
                dest=f.name,
                default=None,
                type=_parser_type(f.type),
                help=f"(env {ENV_PREFIX}{f.name.upper()}, [{table}] {key} in --config, default {f.default!r}"
                + (f"; {AUTO_ENGINE_HELP})" if f.name == "engine" else ")"),
                **bare,
            )

    @classmethod
    def from_args(cls, args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
        s, sources = cls.resolve(args, env)
        s.validate(sources)
        return s

    def validate(self, sources: Mapping[str, str] | None = None) -> None:
        """The types (the nested model) and the rules across fields; an error names the settings it is about
        and, given `sources`, where each that is not a default came from."""
        try:
            settings_model.validated(type(self), dataclasses.asdict(self), sources or {}, strict=True)
            self._check()
        except SettingValueError as exc:
            where = [f"{n} from {sources[n]}" for n in exc.names if sources and n in sources]
            if not where:
                raise
            raise SettingValueError(f"{exc} ({'; '.join(where)})", *exc.names) from None

    def _check(self) -> None:
        if self.engine not in ENGINES:
            raise SettingValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}", "engine")
        if self.engine == "wan":
            self.validate_wan()
        if self.engine == "motion":
            self.validate_motion()
        if self.backend not in ("onnxruntime", "torch", "tensorrt"):
            raise SettingValueError(f"backend must be onnxruntime, torch or tensorrt, got {self.backend!r}", "backend")
        if not 1 <= self.steps <= 64:
            raise SettingValueError(f"steps must be 1..64, got {self.steps}", "steps")
        if self.threads < 0:
            raise SettingValueError(f"threads must be >= 0, got {self.threads}", "threads")
        if self.asr_device not in ("cpu", "cuda"):
            raise SettingValueError(f"asr_device must be cpu or cuda, got {self.asr_device!r}", "asr_device")
        if self.asr_threads < 1 or self.asr_workers < 1:
            raise SettingValueError(
                f"asr_threads and asr_workers must be >= 1, got {self.asr_threads}, {self.asr_workers}",
                "asr_threads",
                "asr_workers",
            )
        if self.device not in ("auto", "cpu", "cuda"):
            raise SettingValueError(f"device must be auto, cpu or cuda, got {self.device!r}", "device")
        if self.log_format not in ("text", "json"):
            raise SettingValueError(f"log_format must be text or json, got {self.log_format!r}", "log_format")
        if self.image_format not in IMAGE_FORMATS:
            raise SettingValueError(
                f"image_format must be {' or '.join(IMAGE_FORMATS)}, got {self.image_format!r}", "image_format"
            )
        if not 1 <= self.quality <= 100:
            raise SettingValueError(f"quality must be 1..100, got {self.quality}", "quality")
        if not 0 <= self.port <= 65535:
            raise SettingValueError(f"port must be 0..65535, got {self.port}", "port")
        for name in (
            "max_sessions",
            "max_clip_bytes",
            "max_message_bytes",
            "max_json_bytes",
            "max_json_depth",
            "max_avatars",
            "max_preparing_avatars",
            "max_clips_per_session",
            "max_pending_per_session",
            "max_viewers_per_session",
            "max_connections_per_ip",
        ):
            if getattr(self, name) < 1:
                raise SettingValueError(f"{name} must be >= 1, got {getattr(self, name)}", name)
        for name in (
            "max_clip_seconds",
            "max_audio_backlog_s",
            "max_render_seconds",
            "session_idle_s",
            "ws_idle_s",
            "header_timeout_s",
            "body_min_bytes_per_s",
        ):
            if not getattr(self, name) > 0:
                raise SettingValueError(f"{name} must be > 0, got {getattr(self, name)}", name)

        if not 0 < self.capacity_headroom <= 1:
            raise SettingValueError(
                f"capacity_headroom must be in (0, 1], got {self.capacity_headroom}", "capacity_headroom"
            )
        for name in ("admission", "ladder", "malloc_tune"):
            if getattr(self, name) not in (0, 1):
                raise SettingValueError(f"{name} must be 0 or 1, got {getattr(self, name)}", name)
        for name in ("capacity_window_s", "ladder_up_s"):
            if not getattr(self, name) > 0:
                raise SettingValueError(f"{name} must be > 0, got {getattr(self, name)}", name)
        for name in (
            "rate_sessions_per_min",
            "rate_http_per_s",
            "rate_ws_msgs_per_s",
            "rate_say_per_s",
            "rate_clip_audio_s_per_s",
            "rate_live_audio_s_per_s",
        ):
            if not getattr(self, name) >= 0:
                raise SettingValueError(f"{name} must be >= 0 (0 = no limit), got {getattr(self, name)}", name)
        for o in self.allowed_origins.split(","):
            o = o.strip()
            if o and o != "*" and not (o.startswith("http://") or o.startswith("https://")):
                raise SettingValueError(
                    f"allowed_origins entries must be http(s)://host[:port] or *, got {o!r}", "allowed_origins"
                )
        if self.auth_secret and len(self.auth_secret) < 32:
            raise SettingValueError(
                "auth_secret must be at least 32 characters (HS256 wants a 256-bit key)", "auth_secret"
            )
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingValueError(
                f"redis_url must be redis://, rediss:// or unix://, got {self.redis_url!r}", "redis_url"
            )
        try:
            self.ice()  # IceConfigError (a ValueError) names the bad URL or setting
        except IceConfigError as exc:
            raise SettingValueError(str(exc), "ice_servers", "turn_secret", "turn_ttl_s") from exc
        self.validate_ray()

    def validate_ray(self) -> None:
        if self.ray not in (0, 1):
            raise SettingValueError(f"ray must be 0 or 1, got {self.ray}", "ray")
        if not (1 <= self.ray_min_replicas <= self.ray_max_replicas and self.engine_replicas >= 1):
            raise SettingValueError(
                "need 1 <= ray_min_replicas <= ray_max_replicas and engine_replicas >= 1, got "
                f"{self.ray_min_replicas}, {self.ray_max_replicas}, {self.engine_replicas}",
                "ray_min_replicas",
                "ray_max_replicas",
                "engine_replicas",
            )
        if not self.ray_target_ongoing > 0 or self.ray_replica_cpus < 0 or self.ray_chunk_timeout_s <= 0:
            raise SettingValueError(
                "ray_target_ongoing and ray_chunk_timeout_s must be > 0, ray_replica_cpus >= 0",
                "ray_target_ongoing",
                "ray_chunk_timeout_s",
                "ray_replica_cpus",
            )
        if self.ray_chunk_attempts < 1:
            raise SettingValueError(
                f"ray_chunk_attempts must be >= 1, got {self.ray_chunk_attempts}", "ray_chunk_attempts"
            )
        if self.ray_gateways < 1 or (self.ray_max_gateways and self.ray_max_gateways < self.ray_gateways):
            raise SettingValueError(
                "need ray_gateways >= 1 and ray_max_gateways 0 (fixed) or >= ray_gateways, got "
                f"{self.ray_gateways}, {self.ray_max_gateways}",
                "ray_gateways",
                "ray_max_gateways",
            )
        if not self.ray_gateway_target > 0:
            raise SettingValueError(
                f"ray_gateway_target must be > 0, got {self.ray_gateway_target}", "ray_gateway_target"
            )

    def replica_gpus(self) -> float:
        """GPUs per engine replica: as set, or 1 where the engine runs on a GPU (wan, torch/tensorrt on cuda)."""
        if self.ray_replica_gpus >= 0:
            return self.ray_replica_gpus
        if self.device == "cpu":
            return 0.0
        gpu = self.engine == "wan" or self.device == "cuda" or self.backend == "tensorrt"
        return 1.0 if gpu else 0.0

    def validate_wan(self) -> None:
        """engine=wan: the knobs, and the checkpoint inspected now (cheap file checks), so a missing
        or incomplete one fails at start-up naming what is missing, not at the first request."""
        if not self.checkpoint:
            raise WanCheckpointError(
                "engine wan needs --checkpoint DIR (AVATARCAST_CHECKPOINT): a local "
                "diffusers-format Wan2.2-TI2V checkpoint with transformer/ and vae/"
            )
        if self.wan_dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise SettingValueError(
                f"wan_dtype must be auto, float32, bfloat16 or float16, got {self.wan_dtype!r}", "wan_dtype"
            )
        for name in ("wan_compile", "wan_fp8", "wan_pipeline"):
            if getattr(self, name) not in (0, 1):
                raise SettingValueError(f"{name} must be 0 or 1, got {getattr(self, name)}", name)
        if self.wan_compile_mode not in ("full", "regional"):
            raise SettingValueError(
                f"wan_compile_mode must be full or regional, got {self.wan_compile_mode!r}", "wan_compile_mode"
            )
        if self.wan_vae_warmup not in ("start", "background"):
            raise SettingValueError(
                f"wan_vae_warmup must be start or background, got {self.wan_vae_warmup!r}", "wan_vae_warmup"
            )
        if self.wan_backend not in ("torch", "tensorrt", "onnxruntime"):
            raise SettingValueError(
                f"wan_backend must be torch, tensorrt or onnxruntime, got {self.wan_backend!r}", "wan_backend"
            )
        if self.wan_backend != "torch" and not self.wan_export_dir:
            raise SettingValueError(
                f"wan_backend {self.wan_backend} runs exported graphs: give wan_export_dir "
                "(python -m avatarcast.engines.wan.export --checkpoint CKPT --out DIR)",
                "wan_backend",
                "wan_export_dir",
            )
        if self.wan_prompt_embeds not in ("auto", "random"):
            raise SettingValueError(
                f"wan_prompt_embeds must be auto or random, got {self.wan_prompt_embeds!r}", "wan_prompt_embeds"
            )
        for name in (
            "wan_chunk_latents",
            "wan_context_latents",
            "wan_height",
            "wan_width",
            "wan_batch",
            "wan_vae_batch",
        ):
            if getattr(self, name) < 1:
                raise SettingValueError(f"{name} must be >= 1, got {getattr(self, name)}", name)
        if not self.wan_shift > 0:
            raise SettingValueError(f"wan_shift must be > 0, got {self.wan_shift}", "wan_shift")
        self.wan_schedule()
        inspect_checkpoint(self.checkpoint)

    def ice(self) -> IceServers:
        """The ICE servers for WebRTC peers, checked."""
        return IceServers.from_config(self.ice_servers, self.turn_secret, self.turn_ttl_s)

    @staticmethod
    def language_list(text: str) -> tuple[str, ...]:
        """'en, zh' -> ('en', 'zh')."""
        return tuple(x.strip() for x in text.split(",") if x.strip())

    def avatar_list(self) -> list[str]:
        return [a.strip() for a in self.avatars.split(",") if a.strip()]

    @property
    def first_avatar(self) -> str:
        """The avatar a session that names none gets, and the one start-up measures the engine's cost on."""
        return (self.avatar_list() or [DEFAULT_AVATAR])[0]

    def validate_motion(self) -> None:
        """engine=motion: an exported folder (--weights, or the shipped one), served on onnxruntime (CPU) or torch
        (CPU or CUDA)."""
        from avatarcast.engines.tiny.motion_weights import motion_folder
        from avatarcast.engines.tiny.weights import WeightsError

        if not motion_serves_on(self.backend, self.device):
            raise SettingValueError(
                f"--engine motion serves on onnxruntime on the CPU or on torch, not {self.backend} on {self.device}: "
                f"use --backend torch, or --engine tiny there (or --engine auto, which picks it)",
                "engine",
                "backend",
                "device",
            )
        if self.motion_draw == CUTOUT_DRAW and not cutout_runs_on(self.backend, self.device):
            raise SettingValueError(
                f"--motion-draw cutout draws on onnxruntime on the CPU or on torch: not on {self.backend} on "
                f"{self.device} (--motion-draw copy or residual there)",
                "motion_draw",
                "backend",
                "device",
            )
        if self.weights and self.motion_draw not in ("copy", ADAPTIVE_DRAW, CUTOUT_DRAW, AUTO_DRAW):
            raise SettingValueError(
                "--motion-draw chooses between the shipped motion folders; with --weights DIR that folder's decoder "
                "decides how it draws",
                "motion_draw",
                "weights",
            )
        try:
            motion_folder(self.weights, self.motion_folder_draw)
        except WeightsError as e:
            raise SettingValueError(f"--engine motion: {e}", "engine", "weights", "motion_draw") from e

    @property
    def motion_folder_draw(self) -> str:
        """The shipped motion folder --motion-draw names: "adaptive" serves the residual one (with its copy draw as the
        ladder's cheaper rung)."""
        if self.motion_draw == AUTO_DRAW:
            return auto_draw(self.backend, self.device)
        return "residual" if self.motion_draw == ADAPTIVE_DRAW else self.motion_draw

    @property
    def admits_at_cheaper_decode(self) -> bool:
        """Admission control counts capacity at the ladder's cheaper decode (realtime/admission.py)."""
        return self.engine == "motion" and self.motion_draw == ADAPTIVE_DRAW

    def engine_choice(self) -> str:
        """The engine as the start-up log names it: whether it is this backend's default, and the other choice."""
        default = default_engine(self.backend, self.device)
        if self.engine == default == "motion":
            return (
                f"motion (the default on {self.backend} on {self.device}; --engine tiny for cheaper frames, a smudged "
                "copy of the avatar)"
            )
        if self.engine == default:
            return (
                f"tiny (the default on {self.backend} on {self.device}: motion serves on onnxruntime on the CPU and "
                "on torch on CUDA)"
            )
        return f"{self.engine} (chosen; the default here is {default})"

    def engine_kwargs(self) -> dict[str, Any]:
        """What TinyEngine.load takes from these settings."""
        device = None if self.device == "auto" else self.device
        return {
            "weights_dir": self.weights or None,
            "backend": self.backend,
            "steps": self.steps,
            "threads": self.threads or None,
            "device": device,
        }

    def wan_kwargs(self) -> dict[str, Any]:
        """What WanAvatarEngine.load takes from these settings (besides the cache dir)."""
        return {
            "checkpoint_dir": self.checkpoint,
            "device": self.device,
            "dtype": self.wan_dtype,
            "steps": self.steps,
            "shift": self.wan_shift,
            "chunk_latent_frames": self.wan_chunk_latents,
            "context_latent_frames": self.wan_context_latents,
            "height": self.wan_height,
            "width": self.wan_width,
            "prompt_embeds": self.wan_prompt_embeds,
            "compile": self.wan_compile_mode if self.wan_compile else False,
            "vae_warmup": self.wan_vae_warmup,
            "fp8": bool(self.wan_fp8),
            "batch": self.wan_batch,
            "vae_batch": self.wan_vae_batch,
            "backend": self.wan_backend,
            "export_dir": self.wan_export_dir or None,
            "pipeline": bool(self.wan_pipeline),
            "sigmas": self.wan_schedule(),
        }

    def wan_schedule(self) -> list[float] | None:
        """--wan-sigmas or --wan-timesteps as the sampler's sigmas (None: --steps evenly spaced).
        ValueError names the flag and what is wrong."""
        if self.wan_sigmas and self.wan_timesteps:
            raise SettingValueError("give wan_sigmas or wan_timesteps, not both", "wan_sigmas", "wan_timesteps")
        name, text = ("wan_sigmas", self.wan_sigmas) if self.wan_sigmas else ("wan_timesteps", self.wan_timesteps)
        if not text.strip():
            return None
        try:
            values = [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise SettingValueError(f"{name} must be comma-separated numbers, got {text!r}", name) from None
        if name == "wan_timesteps":
            if any(not 0 < t <= 1000 for t in values):
                raise SettingValueError(f"wan_timesteps must be in (0, 1000], got {text!r}", "wan_timesteps")
            values = warped_sigmas(values, self.wan_shift)
        try:
            FlowMatchEulerSampler(sigmas=values)
        except ValueError as exc:
            raise SettingValueError(f"{name} {text!r}: {exc}", name) from None
        if not 1 <= len(values) <= 64:
            raise SettingValueError(f"{name} must have 1..64 values, got {len(values)}", name)
        return values


def _parser_type(t: Any):
    t = t if isinstance(t, str) else getattr(t, "__name__", str(t))
    return {"int": int, "float": float}.get(t, str)
