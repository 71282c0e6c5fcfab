"""The benchmark's CPU-testable parts (no torch needed): on a simulated GPU, a call whose GPU time
exceeds its host time must not be measured at the GPU's pace (bug 12); a row's host columns and
its empty launch are timed round-robin, and `x launch` divides by the row's own empty launch
(issue 13: the host's speed drifts between rows)."""

import collections
import contextlib
import itertools
import sys
import time
import types

import pytest

from nsa_metadata import bench


class SimulatedGPU:
    """Runs each launched call for `gpu_s` seconds, in order; a launch into a full queue of
    `depth` calls blocks the host until the oldest call ends, as CUDA's launch queue does."""

    def __init__(self, gpu_s, depth):
        self.gpu_s, self.depth, self.ends = gpu_s, depth, collections.deque()

    @staticmethod
    def wait_until(t):
        while time.perf_counter() < t:
            pass

    def launch(self):
        now = time.perf_counter()
        while self.ends and self.ends[0] <= now:
            self.ends.popleft()
        if len(self.ends) >= self.depth:
            self.wait_until(self.ends.popleft())
            now = time.perf_counter()
        self.ends.append(max(now, self.ends[-1] if self.ends else now) + self.gpu_s)

    def done_at(self):
        return self.ends[-1] if self.ends else time.perf_counter()

    def torch(self):
        gpu = self

        class Event:
            def __init__(self, **kw):
                self.t = None

            def record(self, stream=None):
                self.t = gpu.done_at()

            def synchronize(self):
                gpu.wait_until(self.t)

            def query(self):
                return time.perf_counter() >= self.t

        cuda = types.SimpleNamespace(Event=Event,
                                     synchronize=lambda device=None: gpu.wait_until(gpu.done_at()))
        return types.SimpleNamespace(cuda=cuda)


def test_host_column_is_not_throttled_by_the_gpu(monkeypatch):
    gpu = SimulatedGPU(gpu_s=2e-3, depth=4)
    monkeypatch.setitem(sys.modules, "torch", gpu.torch())
    host_us = bench.host_us(lambda k: gpu.launch(), calls=60)
    assert host_us < 0.1 * gpu.gpu_s * 1e6, f"{host_us:.0f} us: the GPU's pace, not the host's"


IDLE_TORCH = types.SimpleNamespace(cuda=types.SimpleNamespace(
    Event=lambda **kw: types.SimpleNamespace(record=lambda stream=None: None, synchronize=lambda: None),
    synchronize=lambda device=None: None))


def test_host_columns_are_timed_round_robin(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", IDLE_TORCH)
    seen = []
    fns = {name: (lambda k, name=name: seen.append((name, k))) for name in ("a", "b", "empty")}
    out = bench.host_us_interleaved(fns, rounds=4, calls=5)
    assert set(out) == set(fns)
    blocks = [[k for _, k in calls] for _, calls in itertools.groupby(seen, key=lambda c: c[0])]
    assert [name for name, _ in itertools.groupby(c[0] for c in seen)] == ["a", "b", "empty"] * 4
    assert [len(ks) for ks in blocks] == [20 + 5] * 3 + [2 + 5] * 9  # warm-up calls: 20, then 2
    for n, ks in enumerate(blocks):  # each block: its warm-up calls, then round n // 3's timed k
        assert ks[-5:] == list(range(n // 3 * 5, n // 3 * 5 + 5)), (n, ks)


class SlowingHost:
    """A fake clock: a call of `us` microseconds takes twice as long once `after` calls are made
    (the machine slowing down during a row)."""

    def __init__(self, after):
        self.t, self.n, self.after = 0.0, 0, after

    def perf_counter(self):
        return self.t

    def call(self, us):
        self.n += 1
        self.t += us * 1e-6 * (2 if self.n > self.after else 1)


def test_host_ratios_survive_the_machine_slowing_down(monkeypatch):
    # a call of 15 us beside an empty launch of 5 us must read 3x, however the machine drifts
    monkeypatch.setitem(sys.modules, "torch", IDLE_TORCH)
    third = 2 * (20 + 10 * 30 + 9 * 2) // 3  # a third of the way through both columns' calls
    clock = SlowingHost(after=third)
    monkeypatch.setattr(bench, "time", clock)
    out = bench.host_us_interleaved({"call": lambda k: clock.call(15.0),
                                     "empty": lambda k: clock.call(5.0)}, rounds=10, calls=30)
    assert out["call"] / out["empty"] == pytest.approx(3.0), out
    # the control: timed one column after the other (as before issue 13), the same drift reads
    # 1.5x, so the fake clock does drift and the 3x above is the round-robin's doing
    clock = SlowingHost(after=third)
    monkeypatch.setattr(bench, "time", clock)
    call, empty = bench.host_us(lambda k: clock.call(15.0)), bench.host_us(lambda k: clock.call(5.0))
    assert call / empty == pytest.approx(1.5)


def test_a_rows_host_columns_are_timed_together_with_its_empty_launch(monkeypatch):
    cases = []

    class FakeCase:  # bench.Case without the GPU
        def __init__(self, *args, **opts):
            self.bytes = 1e6
            self.host = False
            self.ours = self.ours_varying = self.prepared = self.torch = lambda k: None
            cases.append(self)

    together, host_sets = [], []

    def interleaved(fns):
        together.append(sorted(fns))
        host_sets.append(cases[-1].host)
        return {k: 4.0 + i for i, k in enumerate(fns)}

    def gpu(fn):
        host_sets.append(cases[-1].host)
        return 2.0

    monkeypatch.setattr(bench, "Case", FakeCase)
    monkeypatch.setattr(bench, "gpu_us", gpu)
    monkeypatch.setattr(bench, "copy_floor_us", lambda nbytes: 1.0)
    monkeypatch.setattr(bench, "empty_launch", lambda: lambda k: None)
    monkeypatch.setattr(bench, "host_us_interleaved", interleaved)
    (r,) = bench.run([("decode", 8, 4096, {"live": True})], progress=False)
    assert together == [["empty_host_us", "ours_host_us", "ours_varying_host_us", "prepared_host_us",
                         "torch_host_us"]]
    assert (r["ours_host_us"], r["empty_host_us"], r["sglang_host_us"]) == (4.0, 8.0, None)
    # GPU times rotate the input sets, host times use one (Case.pick), and the case is left rotating
    assert host_sets == [False, False, True] and cases[-1].host is False
    assert "empty_host_us" not in bench.run([("decode", 8, 4096, {})], progress=False, gpu_only=True)[0]


def test_host_calls_use_one_buffer_set():
    # rotating 64 sets beside the varying call's would overflow the one-shot plan cache (64
    # plans) and time rebinding: host times use set 0, GPU times rotate
    c = object.__new__(bench.Case)
    c.nsets, c.host = 64, False
    assert [c.pick(s) for s in (0, 5, 64, 70)] == [0, 5, 0, 6]
    c.host = True
    assert {c.pick(s) for s in range(200)} == {0}


def test_x_launch_divides_by_each_rows_own_empty_launch():
    row = dict(key="decode 8x4096 live", bytes=1e6, ours_gpu_us=2.0, floor_gpu_us=1.0,
               ours_host_us=12.0, ours_varying_host_us=16.0, prepared_host_us=5.0)
    lines = bench.table([dict(row, empty_host_us=4.0), row], empty_us=8.0).splitlines()
    assert lines[0].split()[-3:] == ["launch", "x", "launch"]
    assert lines[2].endswith("  4.0  3.0 / 4.0 / 1.2"), lines[2]  # its own: 4.0 us
    assert lines[3].endswith("  8.0  1.5 / 2.0 / 0.6"), lines[3]  # none (older JSON): the run's


def test_every_schedule_row_has_its_twin():
    # issue 14's budget (<= 1 us more up to bs 1024, <= 3 us at 4096) is read from one run: each
    # schedule row needs the same row without the schedule in the grid
    labels = [bench.label(*c) for c in bench.FULL]
    sched = [x for x in labels if x.endswith(",schedule")]
    assert {"decode 4096x4096 live,schedule", "decode 1024x32768 live,schedule"} <= set(sched)
    for x in sched:
        assert x[:-len(",schedule")] in labels, x


def test_schedule_cost_pairs_rows_of_one_run():
    rows = [dict(key="decode 64x32768 live", ours_gpu_us=7.6),
            dict(key="decode 64x32768 live,schedule", ours_gpu_us=7.8),
            dict(key="decode 4096x4096 live,schedule", ours_gpu_us=60.0),  # twin not measured
            dict(key="decode 4096x4096 live,real_only", ours_gpu_us=50.0)]
    (key, without, with_, more), = bench.schedule_cost(rows)
    assert (key, without, with_) == ("decode 64x32768 live,schedule", 7.6, 7.8)
    assert abs(more - 0.2) < 1e-9


def test_each_timed_replay_follows_the_sleeping_kernel(monkeypatch):
    # the start event must wait behind the lead kernel, or it times the host's graph launch too
    log = []

    class Event:
        def __init__(self, enable_timing=False):
            self.timing = enable_timing

        def record(self, stream=None):
            log.append("record" if self.timing else "untimed record")

        def synchronize(self):
            pass

        def elapsed_time(self, other):
            return 1.0

    class Graph:
        def replay(self):
            log.append("replay")

    class Stream:
        def wait_stream(self, other):
            pass

    @contextlib.contextmanager
    def nothing(*args, **kwargs):
        yield

    cuda = types.SimpleNamespace(Stream=Stream, current_stream=Stream, stream=nothing, graph=nothing,
                                 CUDAGraph=Graph, Event=Event, synchronize=lambda device=None: None,
                                 _sleep=lambda cycles: log.append(("sleep", cycles)))
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    assert bench.gpu_us(lambda k: None, replays=5) == pytest.approx(1e3 / bench.K)
    timed = log[len(log) - 5 * 4:]  # the 5 timed replays, after the untimed warm-up replays
    assert timed == [("sleep", bench.LEAD_CYCLES), "record", "replay", "record"] * 5, timed
    assert ("sleep", bench.LEAD_CYCLES) not in log[:len(log) - 5 * 4]  # warm-up replays are not led
