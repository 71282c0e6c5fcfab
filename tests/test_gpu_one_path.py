"""The one path on a real device: one-shot calls bind once per set of buffers and take bs,
max_len and total on every call; threads share the plan cache; the allocator and DLPack rules of
issue 13; the key read through DLPack's C exchange API where the array type has it."""

import threading

import numpy as np
import pytest

import nsa_metadata as nm
from nsa_metadata import _core, _plans
from helpers import POISON, DLPackOnly, random_inputs, repoison
from test_binding import plan_bytes

pytestmark = pytest.mark.gpu
MODES = ["decode", "target_verify", "draft_extend"]
CAP, W, NEXT_N, EXT, PAGE = 8, 70, 2, 3, 16



def buffer_set(lib, mode, seed):
    """Device inputs of CAP requests and poisoned outputs with room for CAP requests."""
    rng = np.random.default_rng(seed)
    inp = random_inputs(rng, mode, CAP, W, P=CAP + 3, W=W, next_n=NEXT_N, max_extend=EXT)
    rows = CAP * (1 if mode == "decode" else NEXT_N if mode == "target_verify" else EXT)
    full = lambda *shape: lib.to_device(np.full(shape, POISON, np.int32))  # noqa: E731
    md = nm.Metadata(full(CAP), full(CAP + 1), full(rows), full(rows + 1), full(rows, W),
                     full(rows, -(-W // PAGE)), None if mode == "decode" else full(rows))
    dev = {k: lib.to_device(v) for k, v in inp.items() if isinstance(v, np.ndarray)}
    return inp, dev, md


def one_shot(mod, mode, arrays, bs, max_len, **kw):
    args = (arrays["seq_lens"][:bs], arrays["req_pool_indices"][:bs], arrays["req_to_token"])
    kw = dict(max_len=max_len, topk=30, page_size=PAGE, **kw)
    if mode == "decode":
        return mod.decode(*args, **kw)
    if mode == "target_verify":
        return mod.target_verify(*args, next_n=NEXT_N, **kw)
    total = int(np.maximum(np.asarray(arrays["extend_lens"][:bs]), 0).sum()) if mod is nm.reference \
        else kw.pop("total")
    return mod.draft_extend(args[0], arrays["extend_lens"][:bs], *args[1:], total=total, **kw)


def via_exchange(mode, dev, md, bs):
    """Whether the one-shot call of these buffers reads its key through DLPack's C exchange API
    (its bs then comes with the key), checked against whether the array type has the API."""
    found = _plans.cache_key(mode, dev["seq_lens"][:bs], dev["req_pool_indices"][:bs],
                             dev["req_to_token"],
                             dev["extend_lens"][:bs] if mode == "draft_extend" else None,
                             30, 1, PAGE, NEXT_N if mode == "target_verify" else 1, False, md)
    assert found is not None
    has_api = _core.exchange_api_version(type(dev["seq_lens"])) is not None
    assert (found[1] is not None) == has_api, (type(dev["seq_lens"]), found[1:])
    return has_api


def assert_step_exact(lib, mode, inp, md, bs, max_len):
    want = one_shot(nm.reference, mode, inp, bs, max_len)
    for f in nm.Metadata.__slots__:
        w = getattr(want, f)
        if w is None:
            continue
        got = lib.to_host(getattr(md, f))[tuple(slice(n) for n in w.shape)]
        np.testing.assert_array_equal(got, w, err_msg=f"{f} (bs {bs}, max_len {max_len})")


@pytest.mark.parametrize("mode", MODES)
def test_one_shot_steps_of_every_size_share_one_plan(lib, mode):
    _plans.PLANS.clear()
    inp, dev, md = buffer_set(lib, mode, 1)
    rng = np.random.default_rng(2)
    steps = [(int(rng.integers(1, CAP + 1)), int(rng.integers(0, W + 1))) for _ in range(30)]
    steps[:2] = [(1, W), (CAP, 0)]
    for bs, max_len in steps:  # bs >= 1: an empty view may have another address (its own plan)
        total = int(np.maximum(inp["extend_lens"][:bs], 0).sum())
        kw = dict(total=total) if mode == "draft_extend" else {}
        repoison(md)
        assert one_shot(nm, mode, dev, bs, max_len, out=md, **kw) is md
        lib.synchronize()
        assert_step_exact(lib, mode, inp, md, bs, max_len)
    # read through the exchange API, one request and more are keyed apart (a one-element input's
    # stride addresses nothing, so it is not keyed)
    assert len(_plans.PLANS) == (2 if via_exchange(mode, dev, md, CAP) else 1)


def test_sixteen_threads_share_the_plan_cache(lib):
    """16 threads x 1000 one-shot calls over more buffer sets than the cache holds (each thread
    owns its sets, on its own stream): every result exact, no exception."""
    per_thread = _plans.PLANS.capacity // 16 + 2
    sets = [[buffer_set(lib, MODES[(t + s) % 3], 100 * t + s) + (MODES[(t + s) % 3],)
             for s in range(per_thread)] for t in range(16)]
    errors = []

    def work(t):
        rng = np.random.default_rng(t)
        try:
            stream = (lib.m.cuda.Stream() if lib.name == "torch"
                      else lib.m.cuda.Stream(non_blocking=True))
            with (lib.m.cuda.stream(stream) if lib.name == "torch" else stream):
                for k in range(1000):
                    inp, dev, md, mode = sets[t][k % per_thread]
                    bs, max_len = int(rng.integers(0, CAP + 1)), int(rng.integers(0, W + 1))
                    total = int(np.maximum(inp["extend_lens"][:bs], 0).sum())
                    kw = dict(total=total) if mode == "draft_extend" else {}
                    repoison(md)
                    one_shot(nm, mode, dev, bs, max_len, out=md, **kw)
                    stream.synchronize()
                    assert_step_exact(lib, mode, inp, md, bs, max_len)
        except Exception as e:  # noqa: BLE001
            errors.append(f"thread {t}: {e!r}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    inp, dev, md, mode = sets[0][0]
    print(f"{lib.name}: keys read through the exchange API: {via_exchange(mode, dev, md, CAP)}")


def test_outputs_allocated_for_another_stream_are_not_reused_early():
    """Bug 3: out=None with stream= a busy stream: freed before the kernel ran, the outputs'
    memory must not go to the next allocation on the current stream."""
    torch = pytest.importorskip("torch")
    inp = random_inputs(np.random.default_rng(5), "decode", 64, 2000, bad_pool=False)
    d = {k: torch.from_numpy(v).cuda() for k, v in inp.items() if isinstance(v, np.ndarray)}
    side = torch.cuda.Stream()
    for _ in range(3):
        torch.cuda.synchronize()
        with torch.cuda.stream(side):
            torch.cuda._sleep(200_000_000)  # ~0.1 s: the kernel queues behind this on `side`
        md = nm.decode(d["seq_lens"], d["req_pool_indices"], d["req_to_token"], max_len=2000,
                       page_size=64, stream=side)
        shapes = [tuple(getattr(md, f).shape) for f in nm.Metadata.__slots__
                  if getattr(md, f) is not None]
        del md
        fresh = [torch.full(s, 7, dtype=torch.int32, device="cuda") for s in shapes]
        side.synchronize()
        torch.cuda.synchronize()
        assert all(bool((t == 7).all()) for t in fresh), "the kernel wrote into reused memory"


def test_dlpack_only_output_is_refused_and_not_written():
    """Bug 2: refused with a TypeError naming the field; a DLPack-only input stays accepted."""
    torch = pytest.importorskip("torch")
    inp = random_inputs(np.random.default_rng(6), "decode", 10, 64)
    d = {k: torch.from_numpy(v).cuda() for k, v in inp.items() if isinstance(v, np.ndarray)}
    md = nm.decode(d["seq_lens"], d["req_pool_indices"], d["req_to_token"], max_len=64)
    md.page_table_1.fill_(POISON)
    table = md.page_table_1
    md.page_table_1 = DLPackOnly(table)
    with pytest.raises(TypeError, match=r"out\.page_table_1 is seen only through DLPack"):
        nm.decode(d["seq_lens"], d["req_pool_indices"], d["req_to_token"], max_len=64, out=md)
    torch.cuda.synchronize()
    assert bool((table == POISON).all())
    md.page_table_1 = table
    nm.decode(DLPackOnly(d["seq_lens"]), d["req_pool_indices"], d["req_to_token"], max_len=64, out=md)
    want = nm.decode(inp["seq_lens"], inp["req_pool_indices"], inp["req_to_token"], max_len=64)
    np.testing.assert_array_equal(table.cpu().numpy(), want.page_table_1)


@pytest.mark.parametrize("mode", MODES)
def test_prepared_launches_leave_the_plan_as_bound(lib, mode):
    """Bug 6 on the device: real launches of a prepared plan do not write into it."""
    inp, dev, md = buffer_set(lib, mode, 7)
    prep = nm.prepare(mode, dev["seq_lens"], dev["req_pool_indices"], dev["req_to_token"], out=md,
                      extend_lens=dev["extend_lens"], next_n=NEXT_N, topk=30, page_size=PAGE)
    before = plan_bytes(prep._plan)
    for bs, max_len in ((3, 17), (0, 0), (CAP, W)):
        repoison(md)  # (the last step must write its whole region itself)
        prep(bs, max_len, int(np.maximum(inp["extend_lens"][:bs], 0).sum()))
    lib.synchronize()
    assert plan_bytes(prep._plan) == before
    assert_step_exact(lib, mode, inp, md, CAP, W)


def test_buffer_key_on_device_arrays(lib):
    """The key of real device arrays: bs, the current stream of their device (inside another
    stream's context too), equal for fresh views of the same buffers, apart for another view,
    dtype or buffer; None for host arrays."""
    if _core.exchange_api_version(type(lib.to_device(np.zeros(1, np.int32)))) is None:
        pytest.skip(f"{lib.name}'s array type has no DLPack C exchange API")
    inp, dev, md = buffer_set(lib, "draft_extend", 3)
    outs = tuple(getattr(md, f) for f in nm.Metadata.__slots__)

    def key(bs=5, table=None, outs=outs, **change):
        d = dict(dev, **change)
        return _core.buffer_key(d["seq_lens"][:bs], d["req_pool_indices"][:bs],
                                d["extend_lens"][:bs], dev["req_to_token"] if table is None
                                else table, outs)

    stream = lib.m.cuda.Stream() if lib.name == "torch" else lib.m.cuda.Stream(non_blocking=True)
    with (lib.m.cuda.stream(stream) if lib.name == "torch" else stream):
        raw, bs, current = key()
        want = stream.cuda_stream if lib.name == "torch" else stream.ptr
    assert bs == 5 and current == want != 0
    assert key()[2] == (lib.m.cuda.current_stream().cuda_stream if lib.name == "torch"
                        else lib.m.cuda.get_current_stream().ptr)
    assert key()[0] == raw and key(bs=CAP)[0] == raw
    assert key(table=dev["req_to_token"][:, :W - 1])[0] != raw
    assert key(table=dev["req_to_token"][1:])[0] != raw
    assert key(seq_lens=dev["seq_lens"].astype(lib.m.int32) if lib.name == "cupy"
               else dev["seq_lens"].to(lib.m.int32))[0] != raw
    assert key(outs=outs[:4] + (None,) + outs[5:])[0] != raw
    assert key(outs=outs[:5] + (lib.to_device(np.zeros((CAP, 5), np.int32)),) + outs[6:])[0] != raw
    host = lib.to_host(dev["req_to_token"])
    if lib.name == "torch":  # a CPU tensor: host memory is not keyed here
        assert key(table=lib.m.from_numpy(host)) is None
    assert _core.buffer_key(inp["seq_lens"], inp["req_pool_indices"], None, host, ()) is None

