"""avatarcast as a pipecat video service: the assistant's text (and optionally its TTS audio) drives an avatarcast
session, and the session's frames go downstream as OutputImageRawFrame to the pipeline's output transport.

Needs the `pipecat` extra (`pip install "avatarcast[pipecat]"`); nothing else in avatarcast imports this module.
Shaped like pipecat's own avatar services (SimliVideoService, HeyGenVideoService): an AIService placed after the
TTS, that opens its session on StartFrame and closes it on EndFrame/CancelFrame. docs/client.md has an example.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pipecat.audio.utils import create_stream_resampler
from pipecat.frames.frames import (
    AggregatedTextFrame,
    CancelFrame,
    EagerTranscriptionFrame,
    EndFrame,
    Frame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    OutputImageRawFrame,
    StartFrame,
    TextFrame,
    TranscriptionFrame,
    TranslationFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.ai_service import AIService
from pipecat.services.settings import ServiceSettings
from pipecat.utils.text.simple_text_aggregator import SimpleTextAggregator

from avatarcast.client import Client, EncodedFrame, Session, SessionClosed
from avatarcast.realtime.events import ServerEvent

__all__ = ["AvatarcastVideoService", "SentenceCutter", "output_image"]

PCM_RATE = 16_000  # the server's live-audio rate (send_pcm)
# The user's side of the conversation: the avatar shows the assistant's words, not the user's.
USER_TEXT = (TranscriptionFrame, InterimTranscriptionFrame, EagerTranscriptionFrame, TranslationFrame)


class SentenceCutter:
    """Streamed text (LLM tokens, TTS words) cut into whole sentences by the aggregator pipecat's TTS services use."""

    def __init__(self, language: str | None = None) -> None:
        self._agg = SimpleTextAggregator(language=language)
        self._last = ""  # the last character added: TTS words need a space put back before the next one

    async def add(self, text: str, *, spaced: bool) -> list[str]:
        """Append a piece (`spaced`: it carries its own spaces, as LLM tokens do); return the sentences it ends."""
        if not spaced and self._last and not self._last.isspace() and text and not text[0].isspace():
            text = " " + text
        self._last = text[-1:] or self._last
        return [a.text.strip() async for a in self._agg.aggregate(text) if a.text.strip()]

    async def flush(self) -> str:
        """What is left (a reply that ended without a full stop)."""
        rest = await self._agg.flush()
        self._last = ""
        return rest.text.strip() if rest else ""

    async def clear(self) -> None:
        await self._agg.reset()
        self._last = ""


def output_image(frame: EncodedFrame, background: tuple[int, int, int] = (0, 0, 0)) -> OutputImageRawFrame:
    """A frame as pipecat's transports take it: RGB bytes, size (width, height); a WebP frame's alpha is
    composited over `background`. metadata["avatarcast"] keeps the header's index, source and emotion."""
    rgba = frame.decode().rgba
    rgb = rgba[..., :3]
    alpha = rgba[..., 3:]
    if alpha.min() < 255:  # JPEG frames are opaque: nothing to blend
        bg = np.asarray(background, np.uint16)
        rgb = ((rgb.astype(np.uint16) * alpha + bg * (255 - alpha.astype(np.uint16)) + 127) // 255).astype(np.uint8)
    height, width = rgba.shape[:2]
    out = OutputImageRawFrame(image=np.ascontiguousarray(rgb).tobytes(), size=(width, height), format="RGB")
    h = frame.header
    out.metadata["avatarcast"] = {"index": h.index, "source": h.source, "emotion": h.emotion}
    return out


@dataclass
class AvatarcastVideoSettings(ServiceSettings):
    """Settings of AvatarcastVideoService (the session's options are fixed at construction)."""


class AvatarcastVideoService(AIService):
    """Shows an avatarcast avatar that reacts to the assistant's words; place it after the TTS service.

    Text frames (LLM tokens, TTS words; not the user's transcripts) are cut into sentences, each sent as `say`;
    with `send_audio`, TTS audio goes to the server as live speech too. Every frame passes on unchanged, and the
    avatar's frames (640x360 RGB at the server's 8 fps) are pushed downstream. Event handlers:
    `on_avatar_connected(service, hello)` and `on_avatar_event(service, event)` (avatarcast.realtime.events).
    """

    Settings = AvatarcastVideoSettings
    _settings: AvatarcastVideoSettings

    def __init__(
        self,
        *,
        url: str = "http://127.0.0.1:8080",
        token: str | None = None,
        avatar: str = "",
        image_format: str = "jpeg",
        language: str | None = None,
        background: tuple[int, int, int] = (0, 0, 0),
        send_text: bool = True,
        send_audio: bool = False,
        open_timeout: float = 10.0,
        **kwargs: Any,
    ) -> None:
        """`url`, `token`, `avatar`, `image_format` (jpeg, or webp composited over `background`) and `language`
        are the session's (avatarcast.client.Client.open); `open_timeout` bounds the connect at StartFrame."""
        super().__init__(settings=AvatarcastVideoSettings(model=None), **kwargs)
        self._client = Client(url, token=token, open_timeout=open_timeout)
        self._avatar, self._image_format, self._language = avatar, image_format, language
        self._background = background
        self._send_text, self._send_audio = send_text, send_audio
        self._sentences = SentenceCutter(None if language in (None, "auto") else language)
        self._resampler = create_stream_resampler()
        self._session: Session | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._register_event_handler("on_avatar_connected", sync=True)
        self._register_event_handler("on_avatar_event", sync=True)

    @property
    def session(self) -> Session | None:
        """The open avatarcast session (from StartFrame to EndFrame): for emotion(), send_clip(), ping()."""
        return self._session

    def can_generate_metrics(self) -> bool:
        return False

    # -- lifecycle (AIService calls these from process_frame) --

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        self._closing = False
        try:
            self._session = await self._client.open(
                self._avatar, image_format=self._image_format, language=self._language
            )
        except Exception as exc:  # refused, unreachable, timed out: all leave the service without an avatar
            await self.push_error(
                f"avatarcast: no session at {self._client.url}: {type(exc).__name__}: {exc}",
                exception=exc,
                force_treat_as_permanent=True,
            )
            return
        await self._call_event_handler("on_avatar_connected", self._session.hello)

    async def stop(self, frame: EndFrame) -> None:
        await super().stop(frame)
        await self._say(await self._sentences.flush())
        await self._close()

    async def cancel(self, frame: CancelFrame) -> None:
        await super().cancel(frame)
        await self._close()

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._close()

    async def _close(self) -> None:
        """Idempotent: stop the readers, then close the socket (from stop, cancel and cleanup)."""
        self._closing = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            await self.cancel_task(task)
        self._session = None
        await self._client.close()

    # -- frames --

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        downstream = direction == FrameDirection.DOWNSTREAM
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            if self._session is not None:  # images only after StartFrame has gone downstream
                self._tasks = [
                    self.create_task(self._pump_frames(self._session), "avatarcast-frames"),
                    self.create_task(self._pump_events(self._session), "avatarcast-events"),
                ]
            return
        await self.push_frame(frame, direction)  # everything passes on: the transport plays the TTS audio
        if not downstream or self._session is None:
            return
        if isinstance(frame, TextFrame) and self._send_text and self._is_assistant_text(frame):
            for sentence in await self._sentences.add(frame.text, spaced=frame.includes_inter_frame_spaces):
                await self._say(sentence)
        elif isinstance(frame, (LLMFullResponseEndFrame, TTSStoppedFrame)):  # the reply, or its speech, ended
            await self._say(await self._sentences.flush())
            if isinstance(frame, TTSStoppedFrame) and self._send_audio:
                await self._guard(self._session.audio_end())
        elif isinstance(frame, InterruptionFrame):
            await self._sentences.clear()  # the user cut in: the rest of that reply will not be spoken
        elif isinstance(frame, TTSAudioRawFrame) and self._send_audio:
            await self._send_pcm(frame)

    @staticmethod
    def _is_assistant_text(frame: TextFrame) -> bool:
        if isinstance(frame, USER_TEXT):
            return False
        # A TTS announces each segment it will speak, then sends the same words as TTSTextFrames: take those.
        return not (
            isinstance(frame, AggregatedTextFrame) and not isinstance(frame, TTSTextFrame) and frame.will_be_spoken
        )

    async def _say(self, text: str) -> None:
        if text and self._session is not None:
            await self._guard(self._session.say(text))

    async def _send_pcm(self, frame: TTSAudioRawFrame) -> None:
        assert self._session is not None
        pcm = np.frombuffer(frame.audio, "<i2")
        if frame.num_channels > 1:
            pcm = pcm.reshape(-1, frame.num_channels).mean(axis=1).astype("<i2")
        body = await self._resampler.resample(pcm.tobytes(), frame.sample_rate, PCM_RATE)
        if body:
            await self._guard(self._session.send_pcm(body))

    async def _guard(self, send: Awaitable[None]) -> None:
        """A send on a session the server closed is reported (once, by _pump_frames), not raised into the pipeline."""
        try:
            await send
        except SessionClosed:
            pass

    async def _pump_frames(self, session: Session) -> None:
        try:
            async for enc in session.encoded_frames():
                await self.push_frame(await asyncio.to_thread(output_image, enc, self._background))
        except SessionClosed as exc:
            await self.push_error(
                f"avatarcast: the session closed: {exc}", exception=exc, force_treat_as_permanent=True
            )
            return
        if not self._closing:  # a normal close from the server's side (it shut down): no more video
            await self.push_error(
                f"avatarcast: the server closed the session ({session.close_code}: {session.close_reason})",
                force_treat_as_permanent=True,
            )

    async def _pump_events(self, session: Session) -> None:
        async for event in _events(session):
            await self._call_event_handler("on_avatar_event", event)


async def _events(session: Session) -> AsyncIterator[ServerEvent]:
    """session.events(), ending quietly on an error close (_pump_frames reports it)."""
    try:
        async for event in session.events():
            yield event
    except SessionClosed:
        return
