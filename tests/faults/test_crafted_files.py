"""Crafted files against the loaders (issue 18): snapshot pickles that reach past the allow-list, lie about sizes or
nest without end. Each must end in one clear CheckpointError within a time bound: no crash, no code run, no change
to later loads in the same process, no memory the file does not back.

The pickles are made here from raw opcodes. They are loaded in ONE child process (a crash there must not take pytest
with it), which then checks that torch and the loader behave as before; each case asserts on its own line of the
child's report."""

from __future__ import annotations

import io
import json
import pickle
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _util import ROOT, run_command

from sid.networks.precond import EDMPrecond
from sid.testing.crafted import colliding_ints, name
from sid.testing.edm_pickles import SONG, EDMPickler, Persistent, edm_code_modules
from sid.testing.fixtures import TINY, flags

SECONDS = 5.0   # each refusal, on a loaded 2-core machine (they take milliseconds)


# ---------------------------------------------------------------------------------------------- pickle opcodes
def text(value: str) -> bytes:      # SHORT_BINUNICODE
    data = value.encode()
    return b"\x8c" + bytes([len(data)]) + data


def binbytes(data: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(data)) + data


def int4(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


PROTO, STOP, REDUCE, BUILD, TUPLE1, TUPLE2, SETITEM = b"\x80\x04", b".", b"R", b"b", b"\x85", b"\x86", b"s"


def legacy_blob(storage_pickle: bytes, keys: list[str], tail: bytes = b"") -> bytes:
    """What torch.storage._load_from_bytes receives: torch's legacy torch.save of one storage (5 pickles + data)."""
    info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    return b"".join([pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2), pickle.dumps(1001, protocol=2),
                     pickle.dumps(info, protocol=2), storage_pickle, pickle.dumps(keys, protocol=2), tail])


def from_nested_loader(global_name: str) -> bytes:
    """Pushes what the nested storage loader returns for a blob that holds just `global_name` (e.g. torch.Tensor)."""
    module, attr = global_name.rsplit(".", 1)
    blob = legacy_blob(b"\x80\x02" + name(module, attr) + STOP, [])
    return name("torch.storage", "_load_from_bytes") + binbytes(blob) + TUPLE1 + REDUCE


def set_attributes(attributes: bytes) -> bytes:
    """BUILD with state (None, {...}): pickle sets each entry as an attribute of the object below it."""
    return b"N}" + attributes + TUPLE2 + BUILD


def ema(value: bytes) -> bytes:
    return PROTO + b"}" + text("ema") + value + SETITEM + STOP


# ---------------------------------------------------------------------------------------------- the crafted files
def tensor_from_a_pointer(tmp: Path) -> bytes:
    """(a) NEWOBJ_EX(torch.Tensor, (), {cdata: <int>}): torch reads the integer as a TensorImpl pointer (segfault)."""
    return (PROTO + from_nested_loader("torch.Tensor") + b")}" + text("cdata") + int4(0x41414141) + SETITEM
            + b"\x92" + STOP)


def lying_numpy_dtype(tmp: Path) -> bytes:
    """(b) a float64 dtype whose state claims other flags (items holding object pointers) and an itemsize."""
    state = b"(K\x03" + text("|") + b"NNN" + int4(8) + int4(1) + b"K\x3ft"
    dtype = name("numpy", "dtype") + text("f8") + b"\x89\x88\x87" + REDUCE + state + BUILD
    return ema(name("numpy.core.multiarray", "scalar") + dtype + b"C\x08" + b"A" * 8 + TUPLE2 + REDUCE)


def array_with_a_lying_dtype(tmp: Path) -> bytes:
    """(b) an ndarray (numpy's _reconstruct + BUILD) over 8 bytes of the file, with that lying dtype: numpy's own
    state breaks (SystemError: error return without exception set)."""
    state = b"(K\x03" + text("|") + b"NNN" + int4(8) + int4(1) + b"K\x3ft"
    dtype = name("numpy", "dtype") + text("f8") + b"\x89\x88\x87" + REDUCE + state + BUILD
    return ema(name("numpy.core.multiarray", "_reconstruct") + name("numpy", "ndarray") + b"K\x00" + TUPLE1
               + b"C\x01b" + b"\x87" + REDUCE + b"(K\x01K\x01" + TUPLE1 + dtype + b"\x89C\x08" + b"A" * 8 + b"t"
               + BUILD)


def numpy_object_dtype(tmp: Path) -> bytes:
    """(b) a numpy scalar of dtype object: its bytes would be read as a PyObject pointer."""
    dtype = name("numpy", "dtype") + text("O8") + b"\x89\x88\x87" + REDUCE
    return ema(name("numpy.core.multiarray", "scalar") + dtype + b"C\x08" + b"A" * 8 + TUPLE2 + REDUCE)


def defaults_of_rebuild_tensor(tmp: Path) -> bytes:
    """(c) BUILD on an allowed function: replaces torch._utils._rebuild_tensor_v2.__defaults__ process-wide."""
    return ema(name("torch._utils", "_rebuild_tensor_v2") + set_attributes(text("__defaults__") + b"NN" + TUPLE2
                                                                            + SETITEM))


def method_of_untyped_storage(tmp: Path) -> bytes:
    """(c) BUILD on the torch.UntypedStorage class the nested loader returns: replaces one of its methods."""
    return ema(from_nested_loader("torch.UntypedStorage") + set_attributes(text("tolist") + b"N" + SETITEM))


def method_of_a_record_class(tmp: Path) -> bytes:
    """(c) BUILD on the loader's own stand-in class for torch's ModuleDict."""
    return ema(name("torch.nn.modules.container", "ModuleDict") + set_attributes(text("class_name") + text("x")
                                                                                  + SETITEM))


def numpy_array_of_2_gib(tmp: Path) -> bytes:
    """(d) 65 bytes that ask numpy for a 2 GiB array."""
    return (b"\x80\x02" + name("numpy.core.multiarray", "_reconstruct") + name("numpy", "ndarray")
            + int4(2 ** 31 - 1) + TUPLE1 + b"C\x01b" + b"\x87" + REDUCE + STOP)


def storage_of_2_gib(tmp: Path) -> bytes:
    """(d) a storage blob that declares 2**29 float32 values (2 GiB) and holds none."""
    persistent_id = (b"\x80\x02(" + text("storage") + name("torch", "FloatStorage") + text("0") + text("cpu")
                     + int4(2 ** 29) + b"Nt" + b"Q" + STOP)
    blob = legacy_blob(persistent_id, ["0"], struct.pack("<q", 2 ** 29))
    return ema(name("torch.storage", "_load_from_bytes") + binbytes(blob) + TUPLE1 + REDUCE)


def edm_pickle(data: dict, top_kwargs: dict | None = None) -> bytes:
    buffer = io.BytesIO()
    with edm_code_modules():
        EDMPickler(buffer, "raise SystemExit('the module source ran')\n", top_kwargs).dump(data)
    return buffer.getvalue()


def teacher_of_635m_parameters(tmp: Path) -> bytes:
    """(d) an ADM teacher of 666M parameters in 230 KB: every weight a view of one stored zero (stride 0)."""
    with torch.device("meta"):
        net = EDMPrecond(img_resolution=64, img_channels=3, label_dim=1000, model_type="DhariwalUNet",
                         model_channels=288, channel_mult=[1, 2, 3, 4], num_blocks=3, attn_resolutions=[32, 16, 8])
    zero = torch.zeros(1)
    for module in net.modules():
        for key, p in module._parameters.items():
            if p is not None:
                module._parameters[key] = torch.nn.Parameter(zero.expand(p.shape), requires_grad=False)
        for key, b in module._buffers.items():
            if b is not None:
                module._buffers[key] = zero.expand(b.shape)
    return edm_pickle(dict(ema=net))


def architecture(**kwargs):
    def make(tmp: Path) -> bytes:
        return edm_pickle(dict(ema=Persistent("EDMPrecond", dict(_init_args=(), _init_kwargs=dict(SONG, **kwargs)))))
    return make


def deeply_nested_arguments(tmp: Path) -> bytes:
    """(d) constructor arguments nested 100000 lists deep (RecursionError in naive code)."""
    depth = 100_000
    nested = b"]" * depth + b"a" * (depth - 1)   # EMPTY_LIST x depth, then APPEND each into the one below
    kwargs = b"}" + text("channel_mult") + nested + SETITEM
    state = b"}(" + text("_init_args") + b")" + text("_init_kwargs") + kwargs + b"u"
    meta = b"}(" + text("type") + text("class") + text("class_name") + text("EDMPrecond") + text("state") + state + b"u"
    return ema(name("torch_utils.persistence", "_reconstruct_persistent_obj") + meta + TUPLE1 + REDUCE)


def tuple_key_nested_10e6_deep(tmp: Path) -> bytes:
    """(d) a dict key of 10**6 nested tuples: hashing it overflows the C stack (a segfault in naive code)."""
    return PROTO + b"}" + b")" + TUPLE1 * 10 ** 6 + b"K\x01" + SETITEM + STOP


def arguments_shared_without_end(tmp: Path) -> bytes:
    """(d) constructor arguments [x, x] of [y, y] of ... 25 levels: 33 million values for a walk, from 400 bytes."""
    level = b"q\x00" + b"0" + b"](" + b"h\x00h\x00" + b"e"   # memo[0] = top; pop; push [memo[0], memo[0]]
    kwargs = b"}" + text("channel_mult") + b"]" + level * 25 + SETITEM
    state = b"}(" + text("_init_args") + b")" + text("_init_kwargs") + kwargs + b"u"
    meta = b"}(" + text("type") + text("class") + text("class_name") + text("EDMPrecond") + text("state") + state + b"u"
    return ema(name("torch_utils.persistence", "_reconstruct_persistent_obj") + meta + TUPLE1 + REDUCE)


def bytearray_of_2_gib(tmp: Path) -> bytes:
    """(d) protocol 5's BYTEARRAY8 with a length of 2 GiB and no bytes behind it."""
    return b"\x80\x05\x96" + struct.pack("<Q", 2 ** 31) + STOP


def storage(numel: int, key: str) -> bytes:
    """Pushes a float32 storage of `numel` zeros that the file holds (a legacy blob, as EDM's pickles carry them)."""
    persistent_id = (b"\x80\x02(" + text("storage") + name("torch", "FloatStorage") + text(key) + text("cpu")
                     + int4(numel) + b"Nt" + b"Q" + STOP)
    blob = legacy_blob(persistent_id, [key], struct.pack("<q", numel) + bytes(4 * numel))
    return name("torch.storage", "_load_from_bytes") + binbytes(blob) + TUPLE1 + REDUCE


def tensor(numel: int, key: str, size: tuple[int, ...], stride: tuple[int, ...]) -> bytes:
    """Pushes _rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict()): a tensor the file backs."""
    ints = lambda values: b"(" + b"".join(int4(v) for v in values) + b"t"  # noqa: E731
    hooks = name("collections", "OrderedDict") + b")" + REDUCE
    return (name("torch._utils", "_rebuild_tensor_v2") + b"(" + storage(numel, key) + int4(0) + ints(size)
            + ints(stride) + b"\x89" + hooks + b"t" + REDUCE)


N_ADD = 16_384  # floats per storage: two 64 KB storages, whose broadcast sum is 16384 x 16384 floats (1 GiB)


def additems_on_a_tensor(tmp: Path) -> bytes:
    """(e) pickle's ADDITEMS calls `.add` of whatever is below it: here Tensor.add, broadcasting [16384] + [16384, 1]
    to 1 GiB from a 132 KB file (again for each item: hours)."""
    column = tensor(N_ADD, "1", (N_ADD, 1), (1, 1))
    return ema(tensor(N_ADD, "0", (N_ADD,), (1,)) + b"(" + column + b"\x90")


def setitem_on_a_tensor(tmp: Path) -> bytes:
    """(e) SETITEM on a tensor: tensor[0] = value, a write into a weight by index (pickle's SETITEM calls
    __setitem__ of anything)."""
    return ema(tensor(N_ADD, "0", (N_ADD,), (1,)) + int4(0) + b"G" + struct.pack(">d", 1.0) + SETITEM)


KEYS = 75_000  # < 1 MB of integer keys that hash alike: tens of seconds to insert into a dict or set (O(n^2))


def dict_of_keys_that_hash_alike(tmp: Path) -> bytes:
    """(e) a dict of 75000 integer keys with one hash: each insert walks all the others."""
    return ema(b"}(" + b"".join(key + b"N" for key in colliding_ints(KEYS)) + b"u")


def set_of_keys_that_hash_alike(tmp: Path) -> bytes:
    """(e) set([...]) through the allowed builtins.set, of the same keys."""
    return ema(name("builtins", "set") + b"](" + b"".join(colliding_ints(KEYS)) + b"e" + TUPLE1 + REDUCE)


def frozenset_of_keys_that_hash_alike(tmp: Path) -> bytes:
    """(e) protocol 4's FROZENSET opcode over the same keys."""
    return ema(b"(" + b"".join(colliding_ints(KEYS)) + b"\x91")


# case -> (maker, what the one-line error must say)
CASES = {
    "tensor from a pointer": (tensor_from_a_pointer, "storage blob names 'torch.Tensor'"),
    "lying numpy dtype": (lying_numpy_dtype, "numpy dtype 'f8' with a non-standard state"),
    "array with a lying dtype": (array_with_a_lying_dtype, "'numpy.core.multiarray._reconstruct'.*not on the allow"),
    "numpy object dtype": (numpy_object_dtype, "numpy dtype 'O8'"),
    "defaults of _rebuild_tensor_v2": (defaults_of_rebuild_tensor, "sets the state of a method"),
    "method of UntypedStorage": (method_of_untyped_storage, "malformed storage blob: expected exactly one storage"),
    "method of a record class": (method_of_a_record_class, "sets the state of a type"),
    "numpy array of 2 GiB": (numpy_array_of_2_gib, "'numpy.core.multiarray._reconstruct'.*not on the allow-list"),
    "storage of 2 GiB": (storage_of_2_gib, "2147483648 bytes.* whose blob holds 0 bytes"),
    "666M parameters in 230 KB": (teacher_of_635m_parameters, "zero stride"),
    "num_blocks 10**6": (architecture(num_blocks=10 ** 6), "num_blocks = 1000000 is outside the limits"),
    "model_channels 10**5": (architecture(model_channels=10 ** 5), "model_channels = 100000 is outside"),
    "img_resolution 65536": (architecture(img_resolution=65536), "img_resolution = 65536 is outside"),
    "deeply nested arguments": (deeply_nested_arguments, "nested deeper than 32 levels"),
    "tuple key nested 10**6 deep": (tuple_key_nested_10e6_deep, "tuples nested deeper than 64 levels"),
    "arguments shared without end": (arguments_shared_without_end, "with more than 100000 values"),
    "bytearray of 2 GiB": (bytearray_of_2_gib, "an opcode .* that an EDM/SiD network snapshot never contains"),
    "ADDITEMS on a tensor": (additems_on_a_tensor, "ADDITEMS on a Tensor"),
    "SETITEM on a tensor": (setitem_on_a_tensor, "SETITEM on a Tensor"),
    "dict of keys that hash alike": (dict_of_keys_that_hash_alike, "a dict or set key 2305843009213693951"),
    "set of keys that hash alike": (set_of_keys_that_hash_alike, "a dict or set key 2305843009213693951"),
    "frozenset of keys that hash alike": (frozenset_of_keys_that_hash_alike, "a dict or set key 2305843009213693951"),
}

CHILD = r"""
import io, json, pickle, resource, sys, time
import torch
from sid.checkpoints import CheckpointError, load_edm_pickle
from sid.safe_pickle import SnapshotUnpickler

before = (torch._utils._rebuild_tensor_v2.__defaults__, dict(vars(torch.UntypedStorage)),
          {c: dict(vars(c)) for c in SnapshotUnpickler.records})
vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 2 ** 30, resource.RLIM_INFINITY))  # no 2 GiB for a crafted file

for case, path in json.loads(sys.argv[1]):
    start = time.monotonic()
    try:
        load_edm_pickle(path)
        result = dict(loaded=True)
    except CheckpointError as e:
        result = dict(error=str(e))
    except BaseException as e:
        result = dict(other=f"{type(e).__name__}: {e}"[:300])
    print(json.dumps(dict(case=case, seconds=time.monotonic() - start, **result)), flush=True)

weights = torch.randn(3, 4)
buffer = io.BytesIO()
torch.save({"w": weights}, buffer)
buffer.seek(0)
after = (torch._utils._rebuild_tensor_v2.__defaults__, dict(vars(torch.UntypedStorage)),
         {c: dict(vars(c)) for c in SnapshotUnpickler.records})
print(json.dumps(dict(case="process", unchanged=after == before,
                      torch_load=torch.equal(torch.load(buffer, weights_only=True)["w"], weights),
                      pickle=torch.equal(pickle.loads(pickle.dumps(weights)), weights))), flush=True)
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[dict, subprocess.CompletedProcess]:
    folder = tmp_path_factory.mktemp("crafted")
    files = []
    for case, (make, _) in CASES.items():
        path = folder / f"{len(files)}.pkl"
        path.write_bytes(make(folder))
        files.append((case, str(path)))
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(files)], cwd=ROOT, capture_output=True,
                          text=True, timeout=240)
    lines = {}
    for line in done.stdout.splitlines():
        entry = json.loads(line)
        lines[entry.pop("case")] = entry
    return lines, done


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", list(CASES))
def test_crafted_snapshot_is_one_clear_error_in_time(report, case):
    lines, done = report
    assert done.returncode == 0, f"the loading process died (exit {done.returncode}):\n{done.stderr[-3000:]}"
    assert case in lines, done.stderr[-3000:]
    result = lines[case]
    assert "error" in result, result
    assert re.search(CASES[case][1], result["error"]), result["error"]
    assert "\n" not in result["error"] and result["seconds"] < SECONDS, result
    assert "Traceback" not in done.stderr


@pytest.mark.timeout(300)
def test_crafted_snapshots_change_nothing_for_later_loads_in_the_process(report):
    lines, done = report
    assert done.returncode == 0, done.stderr[-3000:]
    assert lines["process"] == dict(unchanged=True, torch_load=True, pickle=True)


@pytest.mark.timeout(120)
def test_teacher_that_would_make_a_tensor_from_a_pointer_exits_2_instead_of_crashing(tmp_path):
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(tensor_from_a_pointer(tmp_path))
    done = run_command("-m", "sid", "distill", "--teacher", str(evil), "--out", str(tmp_path / "run"), *flags(**TINY))
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and str(evil) in error and "torch.Tensor" in error
    assert "Traceback" not in done.stderr and not (tmp_path / "run").exists()
