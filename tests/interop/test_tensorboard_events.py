"""TensorBoard's own reader reads every scalar at every step from llmft's event files.

llmft_write_events (tests/trainer/llmft_write_events.cc, built with the tests)
logs loss, lr, grad_norm and tokens_per_second at steps 1..50 and eval_loss at
every 10th step through trainer/metrics.h. This script reads the directory
with TensorBoard's EventAccumulator (what `tensorboard --logdir` uses for
scalars), its raw LegacyEventFileLoader and the EventFileLoader of its data
ingestion (which migrates simple_value into scalar-plugin tensors), and compares every value with the same
closed-form functions of the step recomputed here, rounded to float32 as
TensorBoard's simple_value stores them. It also checks the file name, the
first event (file_version "brain.Event:2") and the JSONL file.
"""

import json
import os
import re
import socket

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before the import: tensorboard loads TensorFlow when present

import struct
import subprocess
import unittest
from pathlib import Path

# Imported unguarded: a venv without tensorboard fails this test
# (ModuleNotFoundError, non-zero exit); scripts/setup installs it.
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader, LegacyEventFileLoader
from tensorboard.util import tensor_util

from interop_common import ARGS, WORK_DIR, main

STEPS = 50
EVAL_EVERY = 10


def writer_binary() -> Path:
    """$LLMFT_WRITE_EVENTS, else tests/trainer/llmft_write_events in the build tree holding --llmft."""
    if os.environ.get("LLMFT_WRITE_EVENTS"):
        return Path(os.environ["LLMFT_WRITE_EVENTS"])
    for directory in Path(ARGS.llmft).resolve().parents:
        if (directory / "CMakeCache.txt").exists():
            return directory / "tests/trainer/llmft_write_events"
    raise FileNotFoundError(f"no CMake build tree above {ARGS.llmft}")


def f32(value: float) -> float:
    return struct.unpack("<f", struct.pack("<f", value))[0]


def expected_values(step: int) -> dict:
    """The same formulas as llmft_write_events.cc, in double, then rounded to float32."""
    values = {
        "loss": 5.0 - 0.0625 * step + 0.01 * (step % 3),
        "lr": 2e-4 * step / STEPS,
        "grad_norm": 1.0 / step,
        "tokens_per_second": 7000.0 + 13.5 * step,
    }
    if step % EVAL_EVERY == 0:
        values["eval_loss"] = 3.0 - 0.01 * step
    return values


class TensorBoardEventsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.log_dir = WORK_DIR / "events"
        if cls.log_dir.exists():
            for path in cls.log_dir.iterdir():
                path.unlink()
        result = subprocess.run([str(writer_binary()), "--dir", str(cls.log_dir), "--steps", str(STEPS)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise AssertionError(f"llmft_write_events exited {result.returncode}:\n{result.stdout}{result.stderr}")
        cls.event_file = Path(result.stdout.strip())

    def test_event_file_name(self):
        files = sorted(p.name for p in self.log_dir.iterdir() if "tfevents" in p.name)
        self.assertEqual(files, [self.event_file.name])
        # events.out.tfevents.<10-digit unix seconds>.<hostname>, as TensorFlow's EventsWriter names them
        match = re.fullmatch(r"events\.out\.tfevents\.(\d{10})\.(.+)", self.event_file.name)
        self.assertIsNotNone(match, self.event_file.name)
        self.assertEqual(match.group(2), socket.gethostname())

    def expected_by_step_and_tag(self) -> dict:
        return {(step, tag): f32(v) for step in range(1, STEPS + 1) for tag, v in expected_values(step).items()}

    def test_raw_events_through_legacy_event_file_loader(self):
        events = list(LegacyEventFileLoader(str(self.event_file)).Load())
        self.assertEqual(events[0].file_version, "brain.Event:2")
        self.assertEqual(events[0].WhichOneof("what"), "file_version")
        summaries = events[1:]
        self.assertEqual(len(summaries), STEPS + STEPS // EVAL_EVERY)
        wall_times = [event.wall_time for event in events]
        self.assertEqual(wall_times, sorted(wall_times))
        got = {}
        for event in summaries:
            self.assertEqual(event.WhichOneof("what"), "summary")
            for value in event.summary.value:
                self.assertEqual(value.WhichOneof("value"), "simple_value")
                self.assertNotIn((event.step, value.tag), got)
                got[(event.step, value.tag)] = value.simple_value
        self.assertEqual(got, self.expected_by_step_and_tag())

    def test_migrated_events_through_event_file_loader(self):
        events = list(EventFileLoader(str(self.event_file)).Load())
        self.assertEqual(events[0].file_version, "brain.Event:2")
        got = {}
        for event in events[1:]:
            for value in event.summary.value:
                self.assertEqual(value.metadata.plugin_data.plugin_name, "scalars", value.tag)
                array = tensor_util.make_ndarray(value.tensor)
                self.assertEqual(array.shape, ())
                got[(event.step, value.tag)] = float(array)
        self.assertEqual(got, self.expected_by_step_and_tag())

    def test_every_scalar_at_every_step_through_event_accumulator(self):
        accumulator = EventAccumulator(str(self.log_dir), size_guidance={"scalars": 0})  # 0: keep all
        accumulator.Reload()
        tags = accumulator.Tags()["scalars"]
        self.assertEqual(sorted(tags), sorted(["loss", "lr", "grad_norm", "tokens_per_second", "eval_loss"]))
        for tag in tags:
            scalars = accumulator.Scalars(tag)
            steps = [s for s in range(1, STEPS + 1) if tag in expected_values(s)]
            with self.subTest(tag=tag):
                self.assertEqual([event.step for event in scalars], steps)
                self.assertEqual([event.value for event in scalars], [f32(expected_values(s)[tag]) for s in steps])

    def test_jsonl_matches_in_double(self):
        lines = [json.loads(line) for line in (self.log_dir / "metrics.jsonl").read_text().splitlines()]
        self.assertEqual(len(lines), STEPS + STEPS // EVAL_EVERY)
        got = {}
        for line in lines:
            step = line.pop("step")
            line.pop("wall_time")
            for tag, value in line.items():
                got[(step, tag)] = value
        want = {(step, tag): v for step in range(1, STEPS + 1) for tag, v in expected_values(step).items()}
        self.assertEqual(got, want)


if __name__ == "__main__":
    main()
