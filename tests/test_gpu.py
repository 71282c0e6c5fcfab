"""The kernel against the reference: every byte of poisoned, strided destination buffers."""

import itertools
import os

import numpy as np
import pytest

import nsa_metadata as nm
from helpers import call, check_device_matches_reference, random_inputs, rows_of

pytestmark = pytest.mark.gpu
MODES = ["decode", "target_verify", "draft_extend"]
TABLES = {"both": ("page_table_1", "real_page_table"), "pt1": ("page_table_1",),
          "real": ("real_page_table",), "none": ()}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("idx_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("live", [False, True])
@pytest.mark.parametrize("tables", list(TABLES))
@pytest.mark.parametrize("ndest", [1, 3])
def test_matches_reference(lib, mode, idx_dtype, live, tables, ndest):
    rng = np.random.default_rng([hash((mode, live, tables, ndest)) % 2**32, idx_dtype().itemsize])
    sizes = [(0, 5), (1, 0), (1, 1), (31, 64), (32, 65), (33, 4097), (257, 300), (5, 9000)]
    if os.environ.get("NSA_SANITIZE"):  # under compute-sanitizer: fewer, still every edge kind
        sizes = [(0, 5), (33, 77)]
    for bs, max_len in sizes:
        configs = ((64, 2048, 1), (1, 40, 1), (3, 100, 4))
        for page_size, topk, kpool in configs[::2] if os.environ.get("NSA_SANITIZE") else configs:
            inp = random_inputs(rng, mode, bs, max_len, idx_dtype=idx_dtype)
            check_device_matches_reference(lib, mode, inp, max_len=max_len, page_size=page_size,
                                           topk=topk, kpool=kpool, live=live, ndest=ndest,
                                           tables=TABLES[tables], strided=bs % 2 == 1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tables", ["both", "pt1", "real"])
def test_small_kernel(lib, mode, tables):
    """What the small kernel (kernels/small.cuh) takes: bs <= 32, one destination set, kpool 1,
    contiguous outputs and a table whose rows start on 16 bytes, pages a power of two >= 4. Every
    index dtype combination (one instance each: seq_lens, req_pool_indices and, in draft_extend,
    extend_lens), live or not, bad pool indices, lengths that wrap or are negative, the schedule."""
    rng = np.random.default_rng([MODES.index(mode), len(TABLES[tables])])
    dtypes = list(itertools.product([np.int32, np.int64], repeat=3 if mode == "draft_extend" else 2))
    cases = [(1, 256, 64, True), (5, 64, 4, False), (32, 1024, 16, True), (32, 4096, 64, True), (8, 36, 4, True)]
    for k, dt in enumerate(dtypes):
        for bs, max_len, page_size, live in cases:
            inp = random_inputs(rng, mode, bs, max_len, W=max_len + 4 * int(rng.integers(0, 3)), next_n=4,
                                max_extend=5)
            if bs > 1 and k % 2 == 1:  # values only the device sees
                inp["seq_lens"][:2] = [2**31 - 2, -3]  # target_verify's L + j + 1 wraps past INT32_MAX
                if mode == "draft_extend":
                    inp["extend_lens"][1] = -2
            for f, t in zip(("seq_lens", "req_pool_indices", "extend_lens"), dt):
                inp[f] = inp[f].astype(t)
            kw = {}
            if mode != "draft_extend" and bs == 32 and live:
                kw["schedule"] = nm.Schedule(7)
            check_device_matches_reference(lib, mode, inp, max_len=max_len, page_size=page_size, topk=100,
                                           live=live, tables=TABLES[tables], strided=False, **kw)


@pytest.mark.parametrize("small", [True, False])
def test_target_verify_hostile_lengths_many_rows(lib, small):
    """target_verify with next_n = 3000 and lengths that are negative or wrap past INT32_MAX:
    their sparse sums in closed form (metadata.cuh's wrapped_sparse_sum), on the small kernel
    (block (0, 0) sums every row's prefix) and on the general one (kpool 3)."""
    rng = np.random.default_rng(3000)
    inp = random_inputs(rng, "target_verify", 5, 64, W=64, next_n=3000)
    inp["seq_lens"][:4] = [2**31 - 1000, -(2**31), -1500, 2**31 - 1]
    check_device_matches_reference(lib, "target_verify", inp, max_len=64, page_size=64, topk=2048,
                                   kpool=1 if small else 3, live=True, strided=not small)


@pytest.mark.parametrize("bs", [255, 256, 257, 1023, 1024, 1025, 4097, 65536])
@pytest.mark.parametrize("mode", MODES)
def test_batch_sizes(lib, mode, bs):
    rng = np.random.default_rng(bs)
    inp = random_inputs(rng, mode, bs, 70, P=bs + 10, next_n=2, max_extend=3)
    check_device_matches_reference(lib, mode, inp, max_len=70, page_size=64, topk=50)


def test_huge_width(lib):
    rng = np.random.default_rng(7)
    W = 2**20 + 3
    inp = random_inputs(rng, "decode", 3, W, P=4, W=W, bad_pool=False)
    inp["seq_lens"][:] = [W, 5, W - 1]
    check_device_matches_reference(lib, "decode", inp, max_len=W, page_size=64, live=True)
    check_device_matches_reference(lib, "decode", inp, max_len=W - 1, page_size=64)


@pytest.mark.parametrize("mode", MODES)
def test_row_programs(lib, mode):
    """Full-width tables (live=False) of at least 4096 columns and more than 32 requests, every
    row on 16 bytes: the row programs (kernels.cuh's row_chunk; 16 KB ones in target_verify from
    16384 columns; in draft_extend one per chunk of a group's rows), at chunk edges, with 1-3 tail
    columns, pages not a power of two, bad pool indices, several destinations and the schedule;
    and 4095 columns (the page programs). draft_extend adds requests of no rows (0, negative,
    -2**40) and batches whose groups hold 2 requests on a 132-SM H100 or H200 (bs x chunks past
    the launcher's 64 programs per SM), the last group shorter."""
    rng = np.random.default_rng(99)
    cases = [(33, 4095, 64), (33, 4096, 64), (34, 4099, 3), (40, 6147, 100), (33, 8192, 1),
             (33, 16387, 64), (35, 20483, 100)]
    if mode == "draft_extend":
        cases += [(1201, 16387, 64), (4301, 4096, 1)]
    for bs, max_len, page_size in cases:
        W = max_len + (-max_len) % 4 + 8
        inp = random_inputs(rng, mode, bs, max_len, W=W, next_n=3,
                            max_extend=2 if bs > 300 else 5)
        if mode == "draft_extend":
            inp["extend_lens"][[0, 5, bs - 1]] = [0, -3, -(2**40)]
        kws = [dict(ndest=3), dict(tables=("page_table_1",))]
        if mode != "draft_extend":
            kws.append(dict(schedule=nm.Schedule(66)))
        for kw in kws if bs <= 300 else kws[1:]:
            check_device_matches_reference(lib, mode, inp, max_len=max_len, page_size=page_size,
                                           strided="rows16", **kw)


@pytest.mark.parametrize("mode", MODES)
def test_sixteen_destinations(lib, mode):
    rng = np.random.default_rng(16)
    inp = random_inputs(rng, mode, 9, 130)
    check_device_matches_reference(lib, mode, inp, max_len=130, page_size=64, ndest=16)


@pytest.mark.parametrize("mode", MODES)
def test_hostile_values(lib, mode):
    """Values only the device sees never address memory: exact -1 rows, wraps as the reference."""
    rng = np.random.default_rng(99)
    inp = random_inputs(rng, mode, 40, 33, idx_dtype=np.int64)
    inp["seq_lens"][:6] = [-(2**31), 2**31 - 1, 2**40 + 3, -5, 2**63 - 1, -(2**63)]
    inp["req_pool_indices"][:4] = [2**62, -(2**63), 2**31, -1]
    if mode == "draft_extend":
        inp["extend_lens"][6:9] = [-3, -(2**40), 0]
    check_device_matches_reference(lib, mode, inp, max_len=33, page_size=16, topk=7, kpool=3,
                                   live=True)


@pytest.mark.parametrize("mode", MODES)
def test_allocated_outputs(lib, mode):
    rng = np.random.default_rng(3)
    inp = random_inputs(rng, mode, 20, 100)
    want = call(nm, mode, inp, max_len=100, page_size=64, topk=30)
    dinp = {k: (lib.to_device(v) if isinstance(v, np.ndarray) else v) for k, v in inp.items()}
    got = call(nm, mode, dinp, rows_of(mode, inp), max_len=100, page_size=64, topk=30)
    for f in nm.Metadata.__slots__:
        w, g = getattr(want, f), getattr(got, f)
        assert (w is None) == (g is None), f
        if w is not None:
            assert type(g).__module__.split(".")[0] == lib.name
            np.testing.assert_array_equal(lib.to_host(g), w, err_msg=f)
    same = call(nm, mode, dinp, rows_of(mode, inp), max_len=100, page_size=1, topk=30)
    assert same.real_page_table is same.page_table_1


@pytest.mark.parametrize("mode", MODES)
def test_check_true_names_first_bad_element(lib, mode):
    rng = np.random.default_rng(11)
    for bad in ("pool", "negative", "overflow", None):
        inp = random_inputs(rng, mode, 50, 40, bad_pool=False)
        if bad == "pool":
            inp["req_pool_indices"][17] = inp["req_to_token"].shape[0]
        elif bad == "negative":
            inp["seq_lens"][23] = -4
        elif bad == "overflow":
            inp["seq_lens"][:] = 2**31 - 10
            if mode == "draft_extend":
                inp["extend_lens"][:] = 1
        dinp = {k: (lib.to_device(v) if isinstance(v, np.ndarray) else v) for k, v in inp.items()}
        try:
            call(nm, mode, inp, max_len=40, check=True)
            want = None
        except ValueError as e:
            want = str(e)
        total = rows_of(mode, inp)
        if want is None:
            call(nm, mode, dinp, total, max_len=40, check=True)
        else:
            with pytest.raises(ValueError) as got:
                call(nm, mode, dinp, total, max_len=40, check=True)
            assert str(got.value) == want
        assert (want is None) == (bad is None), (bad, want)


def test_torch_stream_is_respected():
    """The call is ordered on the current (non-default) stream: queued behind a sleep there."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    inp = random_inputs(rng, "decode", 64, 2000, bad_pool=False)
    d = {k: torch.from_numpy(v).cuda() if isinstance(v, np.ndarray) else v for k, v in inp.items()}
    out = nm.decode(d["seq_lens"], d["req_pool_indices"], d["req_to_token"], max_len=2000)
    out.page_table_1.fill_(-7)
    torch.cuda.synchronize()
    side, reader = torch.cuda.Stream(), torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time
        nm.decode(d["seq_lens"], d["req_pool_indices"], d["req_to_token"], max_len=2000, out=out)
    with torch.cuda.stream(reader):
        early = out.page_table_1[0, :4].cpu()
    assert (early == -7).all(), "the kernel did not wait for the current stream's work"
    side.synchronize()
    want = nm.decode(*[inp[k] for k in ("seq_lens", "req_pool_indices", "req_to_token")], max_len=2000)
    np.testing.assert_array_equal(out.page_table_1.cpu().numpy(), want.page_table_1)
    # and an explicit stream= wins over the current one
    out.page_table_1.fill_(-7)
    torch.cuda.synchronize()
    with torch.cuda.stream(reader):
        torch.cuda._sleep(200_000_000)
    nm.decode(d["seq_lens"], d["req_pool_indices"], d["req_to_token"], max_len=2000, out=out,
              stream=reader)
    assert (out.page_table_1[0, :4].cpu() == -7).all()
    reader.synchronize()
    np.testing.assert_array_equal(out.page_table_1.cpu().numpy(), want.page_table_1)


def test_cupy_stream(lib):
    if lib.name != "cupy":
        pytest.skip("CuPy only")
    cupy = lib.m
    rng = np.random.default_rng(6)
    inp = random_inputs(rng, "target_verify", 33, 500)
    s = cupy.cuda.Stream(non_blocking=True)
    with s:
        check_device_matches_reference(lib, "target_verify", inp, max_len=500, page_size=64)


def test_generic_dlpack_producer():
    torch = pytest.importorskip("torch")

    class Producer:  # any object with the DLPack protocol
        def __init__(self, t):
            self.t = t

        def __dlpack__(self, **kw):
            return self.t.__dlpack__(**kw)

        def __dlpack_device__(self):
            return self.t.__dlpack_device__()

    rng = np.random.default_rng(8)
    inp = random_inputs(rng, "decode", 10, 64)
    want = nm.decode(inp["seq_lens"], inp["req_pool_indices"], inp["req_to_token"], max_len=64)
    got = nm.decode(*(Producer(torch.from_numpy(inp[k]).cuda())
                      for k in ("seq_lens", "req_pool_indices", "req_to_token")), max_len=64)
    np.testing.assert_array_equal(got.page_table_1.cpu().numpy(), want.page_table_1)
    np.testing.assert_array_equal(got.nsa_cu_seqlens_k.cpu().numpy(), want.nsa_cu_seqlens_k)


def test_mixed_host_and_device_is_an_error(lib):
    rng = np.random.default_rng(9)
    inp = random_inputs(rng, "decode", 4, 8)
    with pytest.raises(ValueError, match="req_to_token"):
        nm.decode(lib.to_device(inp["seq_lens"]), lib.to_device(inp["req_pool_indices"]),
                  inp["req_to_token"], max_len=8)


def test_repeated_calls_on_the_same_buffers_stay_exact(lib):
    """Steps on persistent buffers (the validated plan is reused) follow every change of the
    arguments, and misuse is still refused."""
    rng = np.random.default_rng(21)
    inp = random_inputs(rng, "decode", 40, 500, bad_pool=False)
    d = {k: lib.to_device(v) for k, v in inp.items() if isinstance(v, np.ndarray)}
    md = nm.decode(d["seq_lens"], d["req_pool_indices"], d["req_to_token"], max_len=500, page_size=64)
    for step in range(30):
        fresh = random_inputs(rng, "decode", 40, 500, P=inp["req_to_token"].shape[0],
                              W=inp["req_to_token"].shape[1], bad_pool=False)
        d["seq_lens"][...] = lib.to_device(fresh["seq_lens"])  # in place, same buffer
        max_len = int(rng.choice([500, 499, 64]))
        topk = int(rng.choice([2048, 5]))
        nm.decode(d["seq_lens"], d["req_pool_indices"], d["req_to_token"], max_len=max_len,
                  topk=topk, page_size=64, out=md)
        want = nm.decode(fresh["seq_lens"], inp["req_pool_indices"], inp["req_to_token"],
                         max_len=max_len, topk=topk, page_size=64)
        lib.synchronize()
        np.testing.assert_array_equal(lib.to_host(md.nsa_cu_seqlens_k), want.nsa_cu_seqlens_k)
        np.testing.assert_array_equal(lib.to_host(md.page_table_1)[:, :max_len], want.page_table_1)
    with pytest.raises(TypeError, match="max_len"):
        nm.decode(d["seq_lens"], d["req_pool_indices"], d["req_to_token"], max_len=64.0,
                  page_size=64, out=md)
    with pytest.raises(ValueError, match="max_len"):
        nm.decode(d["seq_lens"], d["req_pool_indices"], d["req_to_token"],
                  max_len=inp["req_to_token"].shape[1] + 1, page_size=64, out=md)
    other = nm.decode(d["seq_lens"], d["req_pool_indices"], d["req_to_token"], max_len=500,
                      page_size=64)  # new buffers: a different plan, same answer
    nm.decode(d["seq_lens"], d["req_pool_indices"], d["req_to_token"], max_len=500, page_size=64,
              out=other)
    want = nm.decode(fresh["seq_lens"], inp["req_pool_indices"], inp["req_to_token"], max_len=500,
                     page_size=64)
    lib.synchronize()
    np.testing.assert_array_equal(lib.to_host(other.page_table_1), want.page_table_1)
    np.testing.assert_array_equal(lib.to_host(other.real_page_table), want.real_page_table)


def test_check_true_waits_for_the_given_stream():
    """check=True reads its status word after the stream it launched on, not the current one."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(31)
    inp = random_inputs(rng, "decode", 30, 200, bad_pool=False)
    inp["req_pool_indices"][7] = inp["req_to_token"].shape[0] + 2
    d = {k: torch.from_numpy(v).cuda() for k, v in inp.items() if isinstance(v, np.ndarray)}
    side = torch.cuda.Stream()
    for _ in range(3):
        with torch.cuda.stream(side):
            torch.cuda._sleep(100_000_000)  # the kernel queues behind this on `side`
        with pytest.raises(ValueError, match=r"req_pool_indices\[7\] = "):
            nm.decode(d["seq_lens"], d["req_pool_indices"], d["req_to_token"], max_len=200,
                      check=True, stream=side)
    side.synchronize()
    nm.decode(d["seq_lens"][:7], d["req_pool_indices"][:7], d["req_to_token"], max_len=200,
              check=True, stream=side.cuda_stream)
