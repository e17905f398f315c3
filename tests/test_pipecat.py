"""avatarcast.integrations.pipecat in a real pipecat pipeline (Pipeline, PipelineWorker, WorkerRunner) against
the real server on loopback: the assistant's text goes in, the avatar's frames come out of the pipeline."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pipecat", reason="pipecat is not installed: pip install 'avatarcast[pipecat]'")

from loguru import logger  # pipecat's logger
from pipecat.frames.frames import (
    AggregatedTextFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    OutputImageRawFrame,
    StartFrame,
    TextFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker, ProcessorUnusablePolicy
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from avatarcast.client import EncodedFrame
from avatarcast.integrations.pipecat import AvatarcastVideoService, SentenceCutter, output_image
from avatarcast.realtime import events as ev
from avatarcast.realtime.audio import decode_audio
from avatarcast.realtime.protocol import FrameHeader
from tests.conftest import free_port

HAPPY_CLIP = Path(__file__).resolve().parent / "data" / "speech" / "en" / "en06_happy.ogg"


class Sink(FrameProcessor):
    """The pipeline's last processor: keeps every downstream frame; `done` is set once `until(frame)` holds."""

    def __init__(self, until: Any) -> None:
        super().__init__()
        self.frames: list[Frame] = []
        self.until = until
        self.done = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            self.frames.append(frame)
            if self.until(frame):
                self.done.set()
        await self.push_frame(frame, direction)


def worker(*processors: FrameProcessor, **kwargs: Any) -> PipelineWorker:
    """A pipeline worker (PipelineTask before pipecat 1.3) for the processors, without RTVI or an idle timeout."""
    return PipelineWorker(
        Pipeline(list(processors)), params=PipelineParams(), enable_rtvi=False, idle_timeout_secs=None, **kwargs
    )


async def run_to_end(task: PipelineWorker) -> list[str]:
    """Run the worker (WorkerRunner, PipelineRunner before 1.3) until it ends; return pipecat's warnings."""
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING")
    try:
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(task)
        await runner.run()
    finally:
        logger.remove(sink)
    return warnings


def session_ends(hub: Any, sid: str, timeout: float = 5.0) -> bool:
    """Whether the server drops the session within `timeout` (it ends one whose opening socket closed)."""
    deadline = time.monotonic() + timeout
    while sid in hub.sessions and time.monotonic() < deadline:
        time.sleep(0.05)
    return sid not in hub.sessions


def other_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


def shows_happy(frame: Frame) -> bool:
    meta = frame.metadata.get("avatarcast", {})
    return isinstance(frame, OutputImageRawFrame) and meta.get("source") == "cache" and meta.get("emotion") == "happy"


def test_a_pipeline_drives_the_avatar_and_carries_its_frames(server_url: str, server_hub: Any) -> None:
    async def go() -> dict[str, Any]:
        service = AvatarcastVideoService(url=server_url, avatar="pip")
        events: list[ev.ServerEvent] = []
        hellos: list[ev.Hello] = []

        @service.event_handler("on_avatar_event")
        async def on_event(_: Any, event: ev.ServerEvent) -> None:
            events.append(event)

        @service.event_handler("on_avatar_connected")
        async def on_connected(_: Any, hello: ev.Hello) -> None:
            hellos.append(hello)

        sink = Sink(shows_happy)
        task = worker(service, sink)
        run = asyncio.create_task(run_to_end(task))
        # an LLM's reply as it streams (tokens with their spaces), and a user's transcript the avatar must not say;
        # both sentences read as happy: the reaction frames show happy even when the second say overtakes the first
        await task.queue_frames(
            [
                TranscriptionFrame("this is the user speaking", user_id="u", timestamp="0"),
                LLMFullResponseStartFrame(),
                *[LLMTextFrame(t) for t in ("I am ", "so happy", " right now! ", "Every", "thing is great")],
                LLMFullResponseEndFrame(),
            ]
        )
        await asyncio.wait_for(sink.done.wait(), 15)
        sid = service.session.id if service.session else ""
        await task.queue_frame(EndFrame())
        warnings = await asyncio.wait_for(run, 10)
        return {
            "service": service,
            "sink": sink,
            "events": events,
            "hellos": hellos,
            "sid": sid,
            "warnings": warnings,
            "left": other_tasks(),
        }

    r = asyncio.run(go())
    frames: list[Frame] = r["sink"].frames
    assert isinstance(frames[0], StartFrame) and isinstance(frames[-1], EndFrame)
    images = [f for f in frames if isinstance(f, OutputImageRawFrame)]
    assert len(images) >= 2 and images[0].metadata["avatarcast"]["source"] == "idle"
    for im in images:
        assert im.size == (640, 360) and im.format == "RGB" and len(im.image) == 640 * 360 * 3
    assert (r["hellos"][0].width, r["hellos"][0].height) == (640, 360)
    pixels = np.frombuffer(images[-1].image, np.uint8).reshape(360, 640, 3)
    assert pixels.std() > 10  # a picture, not a blank
    # every other frame passed on, in order
    texts = [f.text for f in frames if isinstance(f, TextFrame)]
    assert texts == ["this is the user speaking", "I am ", "so happy", " right now! ", "Every", "thing is great"]
    # the reply was said as two sentences (the second at the end of the response), the user's words not at all
    said = [e.text for e in r["events"] if isinstance(e, ev.TranscriptFinal) and e.source == "say"]
    assert said == ["I am so happy right now!", "Everything is great"]
    emotions = [e for e in r["events"] if isinstance(e, ev.Emotion) and e.applied]
    assert emotions and emotions[0].label == "happy" and emotions[0].source == "text"
    assert [h.avatar for h in r["hellos"]] == ["pip"]
    # the session, its socket and every task end with the pipeline
    assert r["service"].session is None and r["left"] == [] and r["warnings"] == []
    assert r["sid"] and session_ends(server_hub, r["sid"])


def test_tts_words_and_audio_drive_the_avatar(server_url: str) -> None:
    """Placed after a TTS: its segment announcement is not said twice, its words are, its audio is heard."""
    speech = decode_audio(HAPPY_CLIP.read_bytes())  # 16 kHz float
    pcm = np.concatenate([np.zeros(4000, np.float32), speech, np.zeros(8000, np.float32)])
    at_24k = np.interp(np.arange(pcm.size * 3 // 2) / 1.5, np.arange(pcm.size), pcm)  # as a TTS at 24 kHz
    stereo = (np.repeat(at_24k[:, None], 2, axis=1) * 32767).astype("<i2").tobytes()
    chunk = 2400 * 2 * 2  # 100 ms of 24 kHz stereo int16

    async def go() -> list[ev.ServerEvent]:
        service = AvatarcastVideoService(url=server_url, avatar="pip", language="en", send_audio=True)
        events: list[ev.ServerEvent] = []
        heard = asyncio.Event()

        @service.event_handler("on_avatar_event")
        async def on_event(_: Any, event: ev.ServerEvent) -> None:
            events.append(event)
            if isinstance(event, ev.TranscriptFinal) and event.source == "speech":
                heard.set()

        task = worker(service, Sink(lambda f: False))
        run = asyncio.create_task(run_to_end(task))
        announcement = AggregatedTextFrame("I love this song.", text_type="sentence")
        announcement.will_be_spoken = True
        audio = [TTSAudioRawFrame(stereo[i : i + chunk], 24000, 2) for i in range(0, len(stereo), chunk)]
        words = [TTSTextFrame(w, text_type="word") for w in ("I", "love", "this", "song.")]
        await task.queue_frames([TTSStartedFrame(), announcement, *words, *audio, TTSStoppedFrame()])
        await asyncio.wait_for(heard.wait(), 20)
        await task.queue_frame(EndFrame())
        await asyncio.wait_for(run, 10)
        return events

    events = asyncio.run(go())
    said = [e.text for e in events if isinstance(e, ev.TranscriptFinal) and e.source == "say"]
    heard = [e.text.lower() for e in events if isinstance(e, ev.TranscriptFinal) and e.source == "speech"]
    assert said == ["I love this song."]
    assert len(heard) == 1 and "keys" in heard[0], heard  # the clip's words, through the resampler and send_pcm


def test_a_cancel_mid_stream_closes_the_session(server_url: str, server_hub: Any) -> None:
    async def go() -> dict[str, Any]:
        service = AvatarcastVideoService(url=server_url)
        sink = Sink(lambda f: isinstance(f, OutputImageRawFrame))
        task = worker(service, sink)
        run = asyncio.create_task(run_to_end(task))
        await asyncio.wait_for(sink.done.wait(), 15)
        sid = service.session.id if service.session else ""
        assert sid in server_hub.sessions
        await task.cancel()
        warnings = await asyncio.wait_for(run, 10)
        return {"service": service, "sid": sid, "warnings": warnings, "left": other_tasks()}

    r = asyncio.run(go())
    assert r["service"].session is None and r["left"] == [] and r["warnings"] == []
    assert session_ends(server_hub, r["sid"])


@pytest.mark.parametrize("case", ["unreachable", "refused"])
def test_a_server_that_cannot_give_a_session_is_a_clear_error_and_the_pipeline_ends(case: str, server_url: str) -> None:
    async def go() -> tuple[list[ErrorFrame], list[Any]]:
        # unreachable: a free port, where nothing listens; refused: the server knows no such avatar
        url, avatar = (f"http://127.0.0.1:{free_port()}", "pip") if case == "unreachable" else (server_url, "nobody")
        errors: list[ErrorFrame] = []
        task = worker(
            AvatarcastVideoService(url=url, avatar=avatar, open_timeout=5),
            Sink(lambda f: False),
            processor_unusable_policy=ProcessorUnusablePolicy.CANCEL,
        )

        @task.event_handler("on_pipeline_error")
        async def on_error(_: Any, frame: ErrorFrame) -> None:
            errors.append(frame)

        await asyncio.wait_for(run_to_end(task), 10)
        return errors, other_tasks()

    errors, left = asyncio.run(go())
    assert len(errors) == 1 and errors[0].error.startswith("avatarcast: no session at ws://127.0.0.1:"), errors
    why = {"unreachable": "ConnectionRefusedError: ", "refused": "SessionRefused: session refused (1008)"}[case]
    assert why in errors[0].error and left == [], errors[0].error


def test_sentences_are_cut_from_streamed_tokens_and_tts_words() -> None:
    async def go() -> list[Any]:
        cut = SentenceCutter()
        tokens = [await cut.add(t, spaced=True) for t in ("Hello th", "ere. How are", " you? Fine")]
        rest = [await cut.flush(), await cut.flush()]
        words = SentenceCutter()  # TTS words come without their spaces; "Dr." does not end a sentence
        said = [s for w in ("Dr.", "Smith", "is", "here.", "Bye") for s in await words.add(w, spaced=False)]
        bye = await words.flush()
        await words.add("half a sent", spaced=False)
        await words.clear()
        return [tokens, rest, said, bye, await words.flush()]

    tokens, rest, said, bye, cleared = asyncio.run(go())
    assert tokens == [[], ["Hello there."], ["How are you?"]] and rest == ["Fine", ""]
    assert said == ["Dr. Smith is here."] and bye == "Bye" and cleared == ""


def test_webp_alpha_is_composited_over_the_background() -> None:
    from PIL import Image

    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 0] = 200  # red everywhere; opaque on the left half, clear on the right
    rgba[:, :3, 3] = 255
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, "WEBP", lossless=True)
    frame = EncodedFrame(FrameHeader(7, 0.875, 0.0, "webp", "cache", "happy"), buf.getvalue(), 0.0)
    out = output_image(frame, background=(0, 0, 255))
    px = np.frombuffer(out.image, np.uint8).reshape(4, 6, 3)
    assert out.size == (6, 4) and out.format == "RGB"
    assert (px[:, :3] == (200, 0, 0)).all() and (px[:, 3:] == (0, 0, 255)).all()
    assert out.metadata["avatarcast"] == {"index": 7, "source": "cache", "emotion": "happy"}
