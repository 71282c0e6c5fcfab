"""Shared by the GPU tests: random SPEC inputs, poisoned destination buffers, and the check that
a device call leaves every byte of its (larger, strided) buffers equal to the reference's."""

import numpy as np

import nsa_metadata as nm

POISON = -0x5EEDBEF  # an int32 no call writes by chance


def repoison(md):
    """Every output of Metadata `md` back to POISON (NumPy, CuPy or torch; on the current stream),
    so a step that writes nothing of a region fails instead of showing an earlier step's values."""
    for f in nm.Metadata.__slots__:
        a = getattr(md, f)
        if a is not None:
            (a.fill_ if hasattr(a, "fill_") else a.fill)(POISON)


def random_inputs(rng, mode, bs, max_len, *, P=None, W=None, idx_dtype=np.int64, bad_pool=True,
                  next_n=3, max_extend=5):
    """seq_lens around max_len (some above, a few zero), pool indices (a few out of range when
    bad_pool), a table with negative entries, and draft_extend's extend_lens."""
    P = P or max(bs, 1) + 3
    W = W or max_len + int(rng.integers(0, 9))
    table = rng.integers(-(2**20), 2**31 - 1, size=(P, W), dtype=np.int64).astype(np.int32)
    seq_lens = rng.integers(0, max_len + 70, size=bs).astype(idx_dtype)
    pool = rng.permutation(P)[:bs] if bs <= P else rng.integers(0, P, size=bs)
    pool = pool.astype(idx_dtype)
    if bad_pool and bs:
        k = rng.integers(0, bs, size=max(1, bs // 16))
        pool[k] = rng.choice([-1, P, P + 7, -(2**31)], size=k.shape[0]).astype(idx_dtype)
    extend_lens = rng.integers(0, max_extend + 1, size=bs).astype(idx_dtype)
    if mode == "draft_extend":
        seq_lens = np.maximum(seq_lens, extend_lens)
    return dict(seq_lens=seq_lens, req_pool_indices=pool, req_to_token=table,
                extend_lens=extend_lens, next_n=next_n)


class DLPackOnly:
    """An array that presents itself through DLPack only, as a JAX array does (JAX arrays are
    immutable: writing through a view of one breaks its owner's guarantees)."""

    def __init__(self, a):
        self.a = a

    def __dlpack__(self, *args, **kwargs):
        return self.a.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()


def rows_of(mode, inp):
    bs = inp["seq_lens"].shape[0]
    if mode == "decode":
        return bs
    if mode == "target_verify":
        return bs * inp["next_n"]
    return int(np.maximum(nm.reference.int32(inp["extend_lens"]), 0).sum())


def poisoned_out(mode, inp, max_len, page_size, tables=("page_table_1", "real_page_table"),
                 strided=True, schedule=None):
    """A NumPy Metadata whose arrays are views into larger poisoned buffers (returns md, bases);
    with a schedule, its two outputs too (the metadata in contiguous rows of 8). `strided`: a true
    value offsets every array inside its buffer (tables every other row, 3 columns in), a false
    one makes them contiguous, and "rows16" makes the 1-D outputs contiguous and the table rows
    16-byte apart (each table's first `w` columns of a poisoned buffer whose width is a multiple
    of 4), whatever the width."""
    strided = strided if strided == "rows16" else bool(strided)
    bs, rows = inp["seq_lens"].shape[0], rows_of(mode, inp)
    width = -(-max_len // page_size)
    bases, md = {}, nm.Metadata()
    one_d = {"cache_seqlens": bs, "cu_seqlens_k": bs + 1, "nsa_cache_seqlens": rows,
             "nsa_cu_seqlens_k": rows + 1}
    if mode != "decode":
        one_d["seqlens_expanded"] = rows
    for f, n in one_d.items():
        bases[f] = np.full(n + 5, POISON, np.int32)
        setattr(md, f, bases[f][2:2 + n] if strided is True else bases[f][:n])
    for f, w in (("page_table_1", max_len), ("real_page_table", width)):
        if f in tables:
            if strided == "rows16":
                bases[f] = np.full((rows, w + (-w) % 4 + 4), POISON, np.int32)
                setattr(md, f, bases[f][:, :w])
            elif strided:
                bases[f] = np.full((2 * rows + 1, w + 7), POISON, np.int32)
                setattr(md, f, bases[f][1::2, 3:3 + w])
            else:
                bases[f] = np.full((rows, w), POISON, np.int32)
                setattr(md, f, bases[f])
    if schedule is not None:
        parts = schedule.num_sm_parts
        bases["tile_scheduler_metadata"] = np.full((parts + 3, 8), POISON, np.int32)
        md.tile_scheduler_metadata = bases["tile_scheduler_metadata"][1:1 + parts]
        bases["num_splits"] = np.full(rows + 6, POISON, np.int32)
        md.num_splits = (bases["num_splits"][2:3 + rows] if strided is True
                         else bases["num_splits"][:rows + 1])
    return md, bases


def call(mod, mode, inp, total=None, **kw):
    if mode == "decode":
        return mod.decode(inp["seq_lens"], inp["req_pool_indices"], inp["req_to_token"], **kw)
    if mode == "target_verify":
        return mod.target_verify(inp["seq_lens"], inp["req_pool_indices"], inp["req_to_token"],
                                 next_n=inp["next_n"], **kw)
    return mod.draft_extend(inp["seq_lens"], inp["extend_lens"], inp["req_pool_indices"],
                            inp["req_to_token"], total=rows_of(mode, inp) if total is None else total,
                            **kw)


class Lib:
    """torch or CuPy, seen through the few calls the tests need."""

    def __init__(self, name):
        self.name = name
        if name == "torch":
            import torch
            self.m = torch
        else:
            import cupy
            self.m = cupy

    def to_device(self, a):
        if self.name == "torch":
            return self.m.from_numpy(np.ascontiguousarray(a)).cuda()
        return self.m.asarray(a)

    def to_host(self, a):
        return a.cpu().numpy() if self.name == "torch" else self.m.asnumpy(a)

    def view_like(self, base_dev, host_view, host_base):
        """The device view of base_dev with the same offset and strides as host_view in host_base."""
        off = (host_view.__array_interface__["data"][0] - host_base.__array_interface__["data"][0]) // 4
        strides = tuple(s // 4 for s in host_view.strides)
        if self.name == "torch":
            return base_dev.as_strided(host_view.shape, strides, off)
        from cupy.lib.stride_tricks import as_strided
        flat = base_dev.ravel()[off:]
        return as_strided(flat, host_view.shape, host_view.strides)

    def synchronize(self):
        if self.name == "torch":
            self.m.cuda.synchronize()
        else:
            self.m.cuda.runtime.deviceSynchronize()


def check_device_matches_reference(lib, mode, inp, *, max_len, page_size, ndest=1,
                                   tables=("page_table_1", "real_page_table"), strided=True, **kw):
    """Run the reference and the device on identically poisoned buffers; every byte must agree."""
    ref_mds, dev_mds, pairs = [], [], []
    for _ in range(ndest):
        md, bases = poisoned_out(mode, inp, max_len, page_size, tables, strided,
                                 kw.get("schedule"))
        ref_mds.append(md)
        dmd = nm.Metadata()
        for f, base in bases.items():
            dbase = lib.to_device(base)
            setattr(dmd, f, lib.view_like(dbase, getattr(md, f), base))
            pairs.append((f, base, dbase))
        dev_mds.append(dmd)
    call(nm, mode, inp, max_len=max_len, page_size=page_size, out=ref_mds, **kw)
    dinp = {k: (lib.to_device(v) if isinstance(v, np.ndarray) else v) for k, v in inp.items()}
    call(nm, mode, dinp, rows_of(mode, inp), max_len=max_len, page_size=page_size, out=dev_mds, **kw)
    lib.synchronize()
    for f, base, dbase in pairs:
        got = lib.to_host(dbase)
        if not np.array_equal(got, base):
            bad = np.argwhere(got != base)[:5]
            raise AssertionError(f"{f} differs at {bad.tolist()}: got {got[tuple(bad.T)]}, "
                                 f"want {base[tuple(bad.T)]}")
