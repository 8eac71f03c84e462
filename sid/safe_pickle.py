"""The restricted unpickler of EDM/SiD network snapshots: the allow-list is the boundary.

A snapshot pickle may only produce plain data (numbers, strings, bytes, tuples, lists, dicts, sets), `Record`s (the
stand-ins of EDM's persistent objects and torch containers), numbers from numpy scalars and CPU tensors. Every
opcode that calls or mutates something goes through a check here:
- REDUCE calls only the functions of the allow-list, each with checked arguments (never a class, a storage, a
  function returned by another call);
- NEWOBJ/NEWOBJ_EX only create Records and dicts, without arguments;
- BUILD only sets the state of a Record or of a numpy-dtype stand-in (never of a function, class or tensor, so no
  file can change `torch` or this module for later loads in the process);
- the container opcodes (APPEND(S), SETITEM(S), ADDITEMS, DICT, FROZENSET, and calls of dict/set/OrderedDict) act
  only on exact lists, dicts, sets and OrderedDicts (pickle's own ADDITEMS would call `.add` of anything, e.g. a
  tensor's); a dict or set holds at most MAX_KEYS entries whose keys are strings, bytes, small integers, floats,
  None or short tuples of strings (integers that hash alike would make every insert O(n));
- the storage blob inside (`torch.storage._load_from_bytes`: a legacy torch.save of one storage) is parsed here, not
  by torch.load: one storage of a fixed dtype whose bytes are in the file; tensors must lie inside their storage,
  without zero strides (one stored number cannot stand for a whole weight matrix);
- numpy is not used: scalars are decoded from their bytes with a dtype from a fixed list;
- no opcode reads more bytes than the file holds (a length field cannot allocate memory the file does not back).
The pure-Python pickle machinery (`pickle._Unpickler`) is used because the C one cannot be hooked per opcode.

The project's own .pt files (plain data written by torch.save) are read by `load_plain`: scan_torch_file's opcode walk,
then torch.load(weights_only=True)."""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import pickletools
import reprlib
import struct
import types
import zipfile
from collections.abc import Mapping
from typing import Any, BinaryIO

import torch

MAX_DIMS = 8                  # tensor dimensions (EDM: at most 4)
MAX_TUPLE_DEPTH = 64          # tuples in tuples (EDM: 3); hashing a deeper one overflows the C stack
MAX_KEYS = 100_000            # entries of one dict or set (EDM: a few hundred)
KEY_INTS = 2 ** 31            # integer keys lie in [-KEY_INTS, KEY_INTS): hash(n) = n there, so no two collide (Python
# hashes an integer modulo 2**61 - 1: 10**5 keys n + k * (2**61 - 1) share one hash, and inserting them takes ~40 s)
_KEY_ITEMS = (str, bytes, bool, type(None))  # what a tuple key may hold
_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER of the legacy format
_LEGACY_PROTOCOL = 1001       # torch.serialization.PROTOCOL_VERSION


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, unsafe, or not a network snapshot we can load."""


class Record:
    """Stand-in for an object in the pickle: its class name and state (__dict__); none of its code runs."""
    class_name = ""
    state: Mapping = types.MappingProxyType({})  # until pickle's BUILD sets it

    def __init__(self, class_name: str = "", state: dict | None = None):
        self.class_name = class_name or self.class_name
        self.state = {} if state is None else state


class _Storage:
    """A storage read from a nested legacy blob: its bytes as an untyped storage, and its dtype."""

    def __init__(self, untyped: torch.UntypedStorage, dtype: torch.dtype, numel: int):
        self.untyped, self.dtype, self.numel = untyped, dtype, numel


class _NumpyDType:
    """Stand-in for numpy.dtype(name, align, copy) + BUILD(state), as numpy pickles the dtype of a scalar."""
    _CODES = {"f2": "e", "f4": "f", "f8": "d", "i1": "b", "i2": "h", "i4": "i", "i8": "q", "u1": "B", "u2": "H",
              "u4": "I", "u8": "Q", "b1": "?"}  # numpy dtype name -> struct code (no object, void, string types)

    def __init__(self, name: str, endian: str = "<"):
        self.name, self.endian = name, endian

    def setstate(self, state: Any) -> None:
        # numpy's state of a plain number dtype: (version, byteorder, None, None, None, -1, -1, 0); anything else
        # (sub-arrays, fields, an explicit itemsize or flags such as 'holds object pointers') is refused.
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)
                and state[1] in ("<", ">", "|", "=") and state[2:8] == (None, None, None, -1, -1, 0)):
            raise CheckpointError(f"refusing to load: numpy dtype {self.name!r} with a non-standard state "
                                  f"{_short(state)} (only plain numbers are allowed)")
        self.endian = ">" if state[1] == ">" else "<"


_DICTS = (dict, collections.OrderedDict)  # what SETITEM(S) may fill
_CONTAINER_TYPES = (dict, set, frozenset, collections.OrderedDict)  # callable by REDUCE; their items are checked
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 60, 60


def _short(value: Any) -> str:
    """A bounded, one-line repr for messages (a crafted value may be nested or shared without end)."""
    return _REPR.repr(value).replace("\n", " ")


def check_key(key: Any) -> None:
    """Refuse a dict or set key that a crafted file could make hash alike with many others (CheckpointError)."""
    kind = type(key)
    if kind in _KEY_ITEMS or kind is float or (kind is int and -KEY_INTS <= key < KEY_INTS):
        return
    if kind is tuple and len(key) <= 8 and all(type(k) in _KEY_ITEMS for k in key):
        return
    raise CheckpointError(f"refusing to load: a dict or set key {_short(key)} (keys are strings, small integers or "
                          f"tuples of strings in an EDM/SiD snapshot)")


def check_size(size: int) -> None:
    if size > MAX_KEYS:
        raise CheckpointError(f"refusing to load: a dict or set of more than {MAX_KEYS} entries")


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not (isinstance(value, tuple) and len(value) <= MAX_DIMS
            and all(type(v) is int and 0 <= v < 2 ** 40 for v in value)):
        raise CheckpointError(f"malformed tensor: {what} {_short(value)} is not a tuple of at most {MAX_DIMS} "
                              f"non-negative integers")
    return value


def _no_hooks(hooks: Any) -> None:
    if not (isinstance(hooks, dict) and not hooks):
        raise CheckpointError("refusing to load: a tensor with backward hooks (a snapshot has none)")


class SnapshotUnpickler(pickle._Unpickler):
    """Unpickler of one snapshot file. `limit` is the number of bytes the file holds."""
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: BinaryIO, limit: int):
        super().__init__(_Bounded(file, limit))
        self.storage_bytes = 0   # bytes of all storages read so far
        self.tensor_bytes = 0    # bytes of all tensors built on them
        self.tuple_depth: dict[int, tuple[tuple, int]] = {}  # id -> (the tuple, kept alive so ids stay unique; depth)
        self.allowed = _allowed_globals(self)
        self.callables = {id(f): f for f in self.allowed.values() if callable(f) and not isinstance(f, type)}
        self.callables.update({id(t): t for t in (dict, set, frozenset, collections.OrderedDict)})

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[module, name]
        except KeyError:
            raise CheckpointError(f"refusing to load: the pickle names the global '{module}.{name}', which is not "
                                  f"on the allow-list of an EDM/SiD network snapshot (nothing was executed)") from None

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError("refusing to load: the pickle uses persistent ids (a torch.save file?), "
                              "not an EDM/SiD network snapshot")

    # -- the opcodes that call or mutate: each checks what it acts on
    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if self.callables.get(id(func)) is not func:
            raise CheckpointError(f"refusing to load: the pickle calls a {type(func).__name__} that is not an "
                                  f"allowed function of an EDM/SiD snapshot")
        if not isinstance(args, tuple):
            raise CheckpointError("malformed pickle: call arguments are not a tuple")
        if func in _CONTAINER_TYPES:
            self.check_container_call(func, args)
        try:
            self.stack[-1] = func(*args)
        except (TypeError, ValueError, OverflowError, RuntimeError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"malformed snapshot: {getattr(func, '__name__', func)} refused its arguments "
                                  f"({type(e).__name__}: {str(e)[:200]})".replace("\n", " ")) from None
    dispatch[pickle.REDUCE[0]] = load_reduce

    def _new(self, cls: Any, args: Any, kwargs: Any) -> None:
        newable = isinstance(cls, type) and (cls is dict or (issubclass(cls, Record) and cls in self.records))
        if not newable:
            raise CheckpointError(f"refusing to load: the pickle creates an object of {_short(cls)}; only snapshot "
                                  f"records and dicts may be created")
        if args != () or kwargs:
            raise CheckpointError(f"refusing to load: the pickle creates a {cls.__name__} with arguments")
        self.append(cls.__new__(cls))

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self._new(cls, args, {})
    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self._new(cls, args, kwargs)
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) is _NumpyDType:
            inst.setstate(state)
        elif isinstance(inst, Record) and type(inst) in self.records:
            if isinstance(state, tuple) and len(state) == 2 and state[1] is None:
                state = state[0]
            if not isinstance(state, dict):
                raise CheckpointError(f"malformed snapshot: the state of a {inst.class_name} is a "
                                      f"{type(state).__name__}, not a dict")
            inst.state = state
        elif type(inst) in _DICTS and (state is None or (type(state) is dict and not state)):
            pass
        else:
            raise CheckpointError(f"refusing to load: the pickle sets the state of a {type(inst).__name__} "
                                  f"(only snapshot records may have their state set)")
    dispatch[pickle.BUILD[0]] = load_build

    # -- the container opcodes: only on exact lists, dicts and sets, with checked keys
    def _target(self, kinds: tuple[type, ...], opcode: str) -> Any:
        target = self.stack[-1]
        if type(target) not in kinds:
            raise CheckpointError(f"refusing to load: {opcode} on a {type(target).__name__} (only on a "
                                  f"{' or '.join(k.__name__ for k in kinds)})")
        return target

    def load_append(self) -> None:
        value = self.stack.pop()
        self._target((list,), "APPEND").append(value)
    dispatch[pickle.APPEND[0]] = load_append

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._target((list,), "APPENDS").extend(items)
    dispatch[pickle.APPENDS[0]] = load_appends

    def load_setitem(self) -> None:
        value, key = self.stack.pop(), self.stack.pop()
        target = self._target(_DICTS, "SETITEM")
        check_key(key)
        check_size(len(target) + 1)
        target[key] = value
    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self._target(_DICTS, "SETITEMS")
        self.set_items(target, items)
    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_dict(self) -> None:
        items = self.pop_mark()
        target: dict = {}
        self.set_items(target, items)
        self.append(target)
    dispatch[pickle.DICT[0]] = load_dict

    @staticmethod
    def set_items(target: dict, items: list) -> None:
        if len(items) % 2:
            raise CheckpointError("malformed pickle: a dict of an odd number of keys and values")
        keys = items[::2]
        for key in keys:
            check_key(key)
        check_size(len(target) + len(keys))
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def load_additems(self) -> None:
        items = self.pop_mark()
        target = self._target((set,), "ADDITEMS")
        for item in items:
            check_key(item)
        check_size(len(target) + len(items))
        target.update(items)
    dispatch[pickle.ADDITEMS[0]] = load_additems

    def load_frozenset(self) -> None:
        items = self.pop_mark()
        for item in items:
            check_key(item)
        check_size(len(items))
        self.append(frozenset(items))
    dispatch[pickle.FROZENSET[0]] = load_frozenset

    def check_container_call(self, func: Any, args: tuple) -> None:
        """dict(...), set(...), frozenset(...), OrderedDict(...): of a list or tuple (of pairs) or a dict only, with
        checked keys."""
        if not args:
            return
        if len(args) != 1 or type(args[0]) not in (list, tuple, dict, collections.OrderedDict):
            raise CheckpointError(f"refusing to load: {func.__name__} of {_short(args)} (only of a list, tuple or "
                                  f"dict)")
        items = args[0]
        if func in (set, frozenset):
            keys = list(items)
        elif type(items) in _DICTS:
            keys = []  # its keys were checked when it was built
        elif all(type(pair) is tuple and len(pair) == 2 for pair in items):
            keys = [pair[0] for pair in items]
        else:
            raise CheckpointError(f"refusing to load: {func.__name__} of items that are not (key, value) pairs")
        for key in keys:
            check_key(key)
        check_size(len(items))

    def _tuple(self, items: tuple) -> tuple:
        """Every tuple the pickle builds: refuse nesting deeper than MAX_TUPLE_DEPTH before anything hashes it."""
        depth = 1
        for item in items:
            if isinstance(item, tuple):
                entry = self.tuple_depth.get(id(item))
                depth = max(depth, 1 + (entry[1] if entry is not None and entry[0] is item else 1))
        if depth > MAX_TUPLE_DEPTH:
            raise CheckpointError(f"refusing to load: tuples nested deeper than {MAX_TUPLE_DEPTH} levels")
        if depth > 1:
            self.tuple_depth[id(items)] = (items, depth)
        return items

    def load_tuple(self) -> None:
        items = self._tuple(tuple(self.pop_mark()))  # before self.append: pop_mark rebinds it
        self.append(items)
    dispatch[pickle.TUPLE[0]] = load_tuple

    def load_tuple1(self) -> None:
        self.stack[-1] = self._tuple((self.stack[-1],))
    dispatch[pickle.TUPLE1[0]] = load_tuple1

    def load_tuple2(self) -> None:
        self.stack[-2:] = [self._tuple((self.stack[-2], self.stack[-1]))]
    dispatch[pickle.TUPLE2[0]] = load_tuple2

    def load_tuple3(self) -> None:
        self.stack[-3:] = [self._tuple((self.stack[-3], self.stack[-2], self.stack[-1]))]
    dispatch[pickle.TUPLE3[0]] = load_tuple3

    def _refuse(self) -> None:
        raise CheckpointError("refusing to load: the pickle uses an opcode (INST/OBJ/EXT, or protocol 5's "
                              "out-of-band buffers) that an EDM/SiD network snapshot never contains")
    for _op in (pickle.INST, pickle.OBJ, pickle.EXT1, pickle.EXT2, pickle.EXT4, pickle.BYTEARRAY8,
                pickle.NEXT_BUFFER, pickle.READONLY_BUFFER):
        dispatch[_op[0]] = _refuse
    del _op

    # -- the allowed functions
    def rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                       hooks: Any = None, metadata: Any = None) -> torch.Tensor:
        """torch._utils._rebuild_tensor_v2, checked: a real storage of this file, the view inside it."""
        if not isinstance(storage, _Storage):
            raise CheckpointError(f"refusing to load: a tensor built on a {type(storage).__name__}, not on a storage "
                                  f"of the file")
        size, stride = _ints(size, "size"), _ints(stride, "stride")
        if type(offset) is not int or offset < 0 or len(stride) != len(size) or type(requires_grad) is not bool:
            raise CheckpointError("malformed tensor: bad offset, stride or requires_grad")
        _no_hooks(hooks if hooks is not None else {})
        if metadata not in (None, {}):
            raise CheckpointError("refusing to load: a tensor with metadata (a snapshot has none)")
        numel = math.prod(size)
        if numel:
            if any(st == 0 and n > 1 for n, st in zip(size, stride)):
                raise CheckpointError(f"refusing to load: a tensor of shape {list(size)} with a zero stride (one "
                                      f"stored value standing for many weights)")
            end = offset + sum((n - 1) * st for n, st in zip(size, stride))
            if end >= storage.numel:
                raise CheckpointError(f"malformed tensor: shape {list(size)} at offset {offset} reaches element "
                                      f"{end} of a storage of {storage.numel}")
        self.tensor_bytes += numel * storage.dtype.itemsize
        if self.tensor_bytes > self.storage_bytes:
            raise CheckpointError(f"refusing to load: the tensors span {self.tensor_bytes} bytes but the file "
                                  f"holds {self.storage_bytes} bytes of weights")
        tensor = torch.empty((0,), dtype=storage.dtype).set_(storage.untyped, offset, size, stride)
        if requires_grad:
            tensor.requires_grad_(True)
        return tensor

    def rebuild_parameter(self, data: Any, requires_grad: Any, hooks: Any) -> torch.nn.Parameter:
        if type(data) is not torch.Tensor or type(requires_grad) is not bool:
            raise CheckpointError(f"malformed snapshot: a parameter of a {type(data).__name__}")
        _no_hooks(hooks)
        return torch.nn.Parameter(data, requires_grad)

    def load_storage(self, blob: Any) -> _Storage:
        """torch.storage._load_from_bytes: parse the legacy torch.save of one storage (never torch.load)."""
        if not isinstance(blob, bytes):
            raise CheckpointError("malformed snapshot: a storage blob that is not bytes")
        storage = _read_legacy_storage(blob)
        self.storage_bytes += storage.numel * storage.dtype.itemsize
        return storage

    records: tuple[type, ...] = ()


_STORAGE_DTYPES = {"FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
                   "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
                   "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                   "BoolStorage": torch.bool, "UntypedStorage": torch.uint8}


class _StorageRef(tuple):
    """('storage', dtype, key, location, numel, None): the persistent id of the one storage in a legacy blob."""


class _BlobUnpickler(SnapshotUnpickler):
    """The small pickles inside a legacy storage blob: plain data, storage types as dtypes, one persistent id."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise CheckpointError(f"refusing to load: the storage blob names '{module}.{name}'; only a torch storage "
                              f"type is allowed there (nothing was executed)")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"
                and isinstance(pid[1], torch.dtype) and isinstance(pid[2], str) and isinstance(pid[3], str)
                and type(pid[4]) is int and pid[4] >= 0 and pid[5] is None):
            raise CheckpointError(f"malformed storage blob: persistent id {_short(pid)}")
        return _StorageRef(pid)


def _read_legacy_storage(blob: bytes) -> _Storage:
    """torch's legacy format (torch/serialization.py `_legacy_save`): five small pickles (magic number, protocol,
    system info, the storage as a persistent id, the storage keys), then per storage its element count (int64)
    and its raw bytes."""
    f = io.BytesIO(blob)

    def small_pickle() -> Any:
        return _BlobUnpickler(f, len(blob)).load()

    try:
        magic, protocol, info, ref, keys = (small_pickle() for _ in range(5))
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"malformed storage blob ({type(e).__name__}: {e})") from None
    if magic != _MAGIC or protocol != _LEGACY_PROTOCOL:
        raise CheckpointError("malformed storage blob: not torch's legacy serialization format")
    if not (isinstance(info, dict) and info.get("little_endian") is True):
        raise CheckpointError("refusing to load: a storage blob that is not little-endian")
    if not isinstance(ref, _StorageRef) or keys != [ref[2]]:
        raise CheckpointError("malformed storage blob: expected exactly one storage")
    dtype, numel = ref[1], ref[4]
    head = f.read(8)
    if len(head) != 8 or struct.unpack("<q", head)[0] != numel:
        raise CheckpointError("malformed storage blob: its element count does not match its header")
    nbytes = numel * dtype.itemsize
    if len(blob) - f.tell() != nbytes:
        raise CheckpointError(f"refusing to load: a storage of {numel} {str(dtype).replace('torch.', '')} values "
                              f"({nbytes} bytes) whose blob holds {len(blob) - f.tell()} bytes")
    data = bytearray(blob[f.tell():])
    untyped = (torch.frombuffer(data, dtype=torch.uint8) if nbytes else torch.empty(0, dtype=torch.uint8))
    return _Storage(untyped.untyped_storage(), dtype, numel)


class _Bounded(io.RawIOBase):
    """A file whose reads never ask for more than the bytes left in it, so that a length field in a pickle cannot
    make the unpickler allocate memory the file does not back."""

    def __init__(self, file: BinaryIO, limit: int):
        self.file, self.left = file, limit

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.file.read(n)
        self.left -= len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def readline(self, size: int = -1) -> bytes:
        line = self.file.readline(min(self.left, 1 << 16) if size is None or size < 0 else min(size, self.left))
        self.left -= len(line)
        return line


def _scalar(dtype: Any, data: Any) -> int | float | bool:
    """numpy.core.multiarray.scalar(dtype, bytes) for plain numbers only, decoded with struct (no numpy)."""
    if type(dtype) is not _NumpyDType or not isinstance(data, bytes):
        raise CheckpointError("refusing to load: a numpy scalar that is not a plain number")
    code = _NumpyDType._CODES[dtype.name]
    if len(data) != struct.calcsize(code):
        raise CheckpointError(f"malformed snapshot: a numpy {dtype.name} scalar of {len(data)} bytes")
    return struct.unpack(dtype.endian + code, data)[0]


def _numpy_dtype(name: Any, align: Any = False, copy: Any = True) -> _NumpyDType:
    if name not in _NumpyDType._CODES or align not in (False, 0) or copy not in (True, False, 0, 1):
        raise CheckpointError(f"refusing to load: numpy dtype {_short(name)} (only plain number types are allowed)")
    return _NumpyDType(name)


def _size(dims: Any) -> torch.Size:
    return torch.Size(_ints(dims, "torch.Size"))


def _reconstruct_persistent_obj(meta: Any) -> Record:
    """Replaces torch_utils.persistence._reconstruct_persistent_obj: keeps the state, never execs meta['module_src']."""
    if not (isinstance(meta, dict) and meta.get("type") == "class" and isinstance(meta.get("class_name"), str)
            and isinstance(meta.get("state"), dict)):
        raise CheckpointError("malformed torch_utils.persistence object: expected meta with type='class', "
                              "class_name and state")
    return Record(meta["class_name"], meta["state"])


_CONTAINERS = {name: type(name, (Record,), {"class_name": name}) for name in ("ModuleDict", "ModuleList", "Sequential")}
SnapshotUnpickler.records = tuple(_CONTAINERS.values())


def _allowed_globals(unpickler: SnapshotUnpickler) -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
        ("torch._utils", "_rebuild_tensor_v2"): unpickler.rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): unpickler.rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): unpickler.load_storage,
        ("torch", "Size"): _size,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("dnnlib.util", "EasyDict"): dict,
        ("dnnlib", "EasyDict"): dict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("numpy", "dtype"): _numpy_dtype,
        ("numpy.core.multiarray", "scalar"): _scalar,   # numpy 1 spelling
        ("numpy._core.multiarray", "scalar"): _scalar,  # numpy 2 spelling
    }
    for name, record in _CONTAINERS.items():  # EDM's enc/dec are plain ModuleDicts
        allowed["torch.nn.modules.container", name] = record
    allowed.update(_TORCH_DTYPES)
    return allowed


_TORCH_DTYPES = {("torch", name): value for name, value in vars(torch).items() if isinstance(value, torch.dtype)}


# ---------------------------------------------------------------------------------------------- torch.save files
MAX_PICKLE_BYTES = 64 * 2 ** 20  # the pickle of a torch.save archive (this project's checkpoint.pt: ~0.2 MB)
MAX_BIG_INTS = 64                # integers of magnitude >= 2**61 - 1 in it (they can hash alike; this project: none)
_BIG_INT = 2 ** 61 - 1           # Python hashes integers modulo this prime
# The opcodes torch's weights_only unpickler implements (protocol 2, as torch.save writes).
_TORCH_OPCODES = frozenset(
    "PROTO STOP GLOBAL NEWOBJ REDUCE BUILD APPEND APPENDS SETITEM SETITEMS MARK TUPLE TUPLE1 TUPLE2 TUPLE3 NONE "
    "NEWFALSE NEWTRUE EMPTY_TUPLE EMPTY_LIST EMPTY_DICT EMPTY_SET BININT BININT1 BININT2 BINFLOAT BINUNICODE "
    "SHORT_BINSTRING BINPERSID BINGET LONG_BINGET BINPUT LONG_BINPUT LONG1".split())


def _torch_file_globals() -> frozenset[str]:
    """The globals a plain-data torch.save file of this project may name: tensors, parameters, storages, dtypes,
    containers. Not bytearray (its argument can be a length: 10 bytes ask for gigabytes), sparse, quantized, nested
    or meta tensors."""
    names = {"collections OrderedDict", "torch._utils _rebuild_tensor_v2", "torch._utils _rebuild_parameter",
             "torch Size", "torch device", "_codecs encode", "builtins set"}
    names.update(f"torch {name}" for name in _STORAGE_DTYPES)
    names.update(f"torch {name}" for _, name in _TORCH_DTYPES)
    return frozenset(names)


def scan_torch_file(path: str | os.PathLike) -> None:
    """Check a torch.save archive before torch.load(weights_only=True) reads it (CheckpointError saying why): every
    member stored uncompressed (no member can expand beyond the file), one pickle of at most MAX_PICKLE_BYTES, whose
    opcodes torch implements, whose globals are those of plain data, with at most MAX_BIG_INTS integers that could
    hash alike. An opcode walk (pickletools): nothing is built, so the walk costs time linear in the pickle."""
    size = os.path.getsize(path)
    if not zipfile.is_zipfile(path):
        raise CheckpointError("not a torch.save zip archive (files of this project are written by torch.save)")
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        packed = [m.filename for m in members if m.compress_type != zipfile.ZIP_STORED]
        if packed:
            raise CheckpointError(f"refusing to load: compressed member {packed[0]!r} (torch.save stores every "
                                  f"member uncompressed)")
        if sum(m.file_size for m in members) > size:
            raise CheckpointError("refusing to load: the members declare more bytes than the file holds")
        pickles = [m for m in members if m.filename.endswith("/data.pkl") and m.filename.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointError(f"not a torch.save archive: expected one <name>/data.pkl, found {len(pickles)}")
        if pickles[0].file_size > MAX_PICKLE_BYTES:
            raise CheckpointError(f"refusing to load: a pickle of {pickles[0].file_size} bytes (at most "
                                  f"{MAX_PICKLE_BYTES})")
        data = archive.read(pickles[0])
    allowed, big = _torch_file_globals(), 0
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name not in _TORCH_OPCODES:
                raise CheckpointError(f"refusing to load: the pickle uses opcode {opcode.name}, which torch.save "
                                      f"never writes")
            if opcode.name == "GLOBAL" and arg not in allowed:
                raise CheckpointError(f"refusing to load: GLOBAL {str(arg).replace(' ', '.')} is not a global of "
                                      f"plain tensors and containers (nothing was executed)")
            if opcode.name == "LONG1" and abs(arg) >= _BIG_INT:
                big += 1
                if big > MAX_BIG_INTS:
                    raise CheckpointError(f"refusing to load: more than {MAX_BIG_INTS} integers of 2**61 or more "
                                          f"(keys that hash alike make loading quadratic)")
    except CheckpointError:
        raise
    except Exception as e:  # pickletools' own ValueError for a cut or malformed stream
        raise CheckpointError(f"malformed pickle ({type(e).__name__}: {str(e)[:200]})".replace("\n", " ")) from None


def load_plain(path: str | os.PathLike, what: str) -> Any:
    """torch.load of a file of plain data (tensors, containers, numbers): weights_only=True refuses a pickle that
    names any other global before anything runs, and scan_torch_file refuses before it what would
    make the load balloon or crawl. Every failure is one ValueError naming the file and `what`."""
    try:
        scan_torch_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such {what}") from None
    except CheckpointError as exc:
        raise ValueError(f"{path}: not a {what} ({exc})") from None
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as exc:  # refused global, torn or foreign file
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        raise ValueError(f"{path}: not a {what} ({next((x for x in lines if 'GLOBAL' in x), lines[0])})") from exc
