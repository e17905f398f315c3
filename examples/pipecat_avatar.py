"""The avatar in a pipecat pipeline: an assistant's streamed reply drives it, its frames come out as PNGs.

Runs offline against `avatarcast serve` (pip install "avatarcast[pipecat]"):
    python examples/pipecat_avatar.py http://127.0.0.1:8080
A frame saver stands in for the output transport; in a bot, the TTS sits between the LLM and the avatar."""

import asyncio
import sys

from PIL import Image
from pipecat.frames.frames import EndFrame, Frame, LLMFullResponseEndFrame, LLMTextFrame, OutputImageRawFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from avatarcast.integrations.pipecat import AvatarcastVideoService
from avatarcast.realtime.events import ServerEvent


class SaveFrames(FrameProcessor):
    """Stands in for transport.output(): saves the avatar's frames as PNGs."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, OutputImageRawFrame):
            meta = frame.metadata["avatarcast"]  # the frame header's index, source (idle, cache, ...) and emotion
            Image.frombytes(frame.format, frame.size, frame.image).save(f"frame_{meta['index']:05d}.png")
        await self.push_frame(frame, direction)


async def main(url: str) -> None:
    avatar = AvatarcastVideoService(url=url, avatar="pip")

    @avatar.event_handler("on_avatar_event")
    async def on_avatar_event(service: AvatarcastVideoService, event: ServerEvent) -> None:
        print(event)  # avatarcast.realtime.events: TranscriptFinal, Emotion, Latency, ...

    # PipelineWorker and WorkerRunner: pipecat's PipelineTask and PipelineRunner, renamed in pipecat 1.3
    worker = PipelineWorker(Pipeline([avatar, SaveFrames()]), idle_timeout_secs=None)
    runner = WorkerRunner()
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    await worker.queue_frames([LLMTextFrame("I am so happy "), LLMTextFrame("to see you!"), LLMFullResponseEndFrame()])
    await asyncio.sleep(3)  # 24 frames at 8 fps
    await worker.queue_frame(EndFrame())
    await running


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"))
