"""Safe loading of EDM/SiD snapshot pickles, made here following EDM's persistence protocol (offline)."""

import io
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sid.assets import Asset
from sid.checkpoints import CheckpointError, check_limits, fetch_fid_ref, load_edm_pickle, read_snapshot
from sid.networks.precond import EDMPrecond
from sid.teachers import EDM_FID_REFS, EDM_TEACHERS
from sid.testing.edm_pickles import ADM, SONG, Persistent, dump, edm_snapshot, random_net


@pytest.fixture
def marker(tmp_path) -> Path:
    """A file that appears only if code from a pickle runs."""
    return tmp_path / "code-was-executed"


@pytest.mark.parametrize("config", [SONG, ADM], ids=["song", "adm"])
@pytest.mark.parametrize("layout", ["edm", "sid"])
def test_snapshot_loads_without_running_its_code_and_computes_the_same_function(config, layout, tmp_path, marker):
    net = random_net(config)
    path = dump(tmp_path / "network-snapshot-000000.pkl", edm_snapshot(net) if layout == "edm" else dict(ema=net),
                marker)
    loaded = load_edm_pickle(path)
    assert not marker.exists() and "torch_utils.persistence" not in sys.modules
    assert isinstance(loaded, EDMPrecond) and not loaded.training
    assert loaded.init_kwargs == net.init_kwargs
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in loaded.state_dict().values())
    assert not any(p.requires_grad for p in loaded.parameters())
    x = torch.randn(3, 1, 8, 8)
    labels = torch.eye(10)[:3] if config["label_dim"] else None
    assert torch.equal(loaded(x, torch.tensor([0.1, 1.0, 10.0]), labels),
                       net(x, torch.tensor([0.1, 1.0, 10.0]), labels))


def test_snapshot_records_the_edm_extras_as_plain_data(tmp_path, marker):
    data = read_snapshot(dump(tmp_path / "snap.pkl", edm_snapshot(random_net(SONG)), marker))
    assert type(data["dataset_kwargs"]) is dict and data["dataset_kwargs"]["path"] == "cifar10.zip"
    assert data["loss_fn"].class_name == "EDMLoss" and data["loss_fn"].state["P_std"] == 1.2
    assert data["ema"].state["_modules"]["model"].state["_modules"]["enc"].class_name == "ModuleDict"


def test_overrides_replace_recorded_constructor_arguments(tmp_path, marker):
    net = load_edm_pickle(dump(tmp_path / "snap.pkl", dict(ema=random_net(SONG)), marker), dropout=0.05)
    assert net.init_kwargs["dropout"] == 0.05 and net.model.enc["4x4_block0"].dropout == 0.05


def test_teacher_names_resolve_through_fetch_and_the_cache(tmp_path, marker, monkeypatch):
    path = dump(tmp_path / "edm-test.pkl", dict(ema=random_net(SONG)), marker)
    monkeypatch.setenv("SID_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(EDM_TEACHERS, "edm:test", Asset(path.as_uri(), sha256=None))
    assert isinstance(load_edm_pickle("edm:test", registry=EDM_TEACHERS), EDMPrecond)
    assert len(list((tmp_path / "cache").glob("*-edm-test.pkl"))) == 1
    assert isinstance(load_edm_pickle(path.as_uri()), EDMPrecond)


def test_registered_edm_urls_follow_the_nvidia_cdn_layout():
    assert set(EDM_TEACHERS) == {"edm:cifar10-uncond", "edm:cifar10-cond", "edm:imagenet64-cond", "edm:ffhq64",
                                 "edm:afhqv2-64"}
    assert set(EDM_FID_REFS) == {"edm:cifar10-32x32", "edm:imagenet-64x64", "edm:ffhq-64x64", "edm:afhqv2-64x64"}
    prefix = "https://nvlabs-fi-cdn.nvidia.com/edm/"
    assert all(a.url.startswith(prefix + "pretrained/edm-") and a.url.endswith(".pkl") for a in EDM_TEACHERS.values())
    assert EDM_FID_REFS["edm:cifar10-32x32"].url == prefix + "fid-refs/cifar10-32x32.npz"
    assert EDM_TEACHERS["edm:imagenet64-cond"].url.endswith("imagenet-64x64-cond-adm.pkl")
    for asset in [*EDM_TEACHERS.values(), *EDM_FID_REFS.values()]:  # pinned digests, where known, are well formed
        assert asset.sha256 is None or (len(asset.sha256) == 64 and set(asset.sha256) <= set("0123456789abcdef"))


def test_fid_reference_paths_and_names(tmp_path):
    stats = tmp_path / "ref.npz"
    np.savez(stats, mu=np.zeros(2), sigma=np.eye(2))
    assert fetch_fid_ref(str(stats)) == stats
    with pytest.raises(CheckpointError, match="unknown FID reference statistics name 'edm:mnist'.*edm:cifar10-32x32"):
        fetch_fid_ref("edm:mnist", EDM_FID_REFS)


class Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("func,code,where,global_name", [
    (os.system, "touch {marker}", "top", "posix.system"),
    (eval, "open({marker!r}, 'w').close()", "top", "builtins.eval"),
    (exec, "open({marker!r}, 'w').close()", "state", "builtins.exec"),  # hidden inside a network's state
])
def test_pickle_naming_a_global_outside_the_allow_list_is_refused_before_anything_runs(
        func, code, where, global_name, tmp_path, marker):
    evil = Evil(func, code.format(marker=str(marker)))
    net = random_net(SONG)
    if where == "state":
        net.model.payload = evil
    path = dump(tmp_path / "evil.pkl", dict(ema=net, extra=evil) if where == "top" else dict(ema=net), marker)
    with pytest.raises(CheckpointError, match=f"global '{global_name}'.*nothing was executed"):
        load_edm_pickle(path)
    assert not marker.exists()


def test_getattr_gadget_is_refused(tmp_path, marker):
    # builtins.getattr would let a pickle reach any attribute of an allowed object, e.g. torch.load's globals.
    payload = pickle.PROTO + b"\x04" + b"\x8c\x08builtins\x8c\x07getattr\x93."
    path = tmp_path / "gadget.pkl"
    path.write_bytes(payload)
    with pytest.raises(CheckpointError, match="'builtins.getattr'"):
        load_edm_pickle(path)


def _truncated(tmp_path, marker):
    good = dump(tmp_path / "good.pkl", dict(ema=random_net(SONG)), marker).read_bytes()
    return good[: len(good) // 2]


def _zip(tmp_path, marker):
    buffer = io.BytesIO()
    torch.save(random_net(SONG).state_dict(), buffer)
    return buffer.getvalue()


def _pickled(data, top_kwargs=None):
    def make(tmp_path, marker):
        return dump(tmp_path / "made.pkl", data() if callable(data) else data, marker, top_kwargs).read_bytes()
    return make


@pytest.mark.parametrize("make,message", [
    (None, "cannot get teacher .*no such file"),
    (_truncated, "cannot unpickle .*truncated"),
    (lambda tmp_path, marker: b"", "cannot unpickle"),
    (_zip, "torch.save zip archive"),
    (_pickled([1, 2, 3]), "expected an EDM/SiD network snapshot.*found list"),
    (_pickled(dict(G_ema=1)), "dict with key 'ema'.*found a dict with keys \\['G_ema'\\]"),
    (_pickled(dict(ema=Persistent("VPPrecond", {}))), "unknown architecture: 'ema' is VPPrecond"),
    (_pickled(dict(ema=Persistent("EDMPrecond", {}))), "no recorded keyword constructor arguments"),
    (_pickled(dict(ema=Persistent("EDMPrecond", dict(_init_args=(), _init_kwargs=SONG, _modules=dict(model=5))))),
     "malformed snapshot: module model is a int"),
    (_pickled(lambda: dict(ema=random_net(SONG)), dict(SONG, model_type="FancyUNet")),
     "unknown architecture: cannot build.*model_type must be one of"),
    (_pickled(lambda: dict(ema=random_net(SONG)), dict(SONG, model_channels=32)), "weights do not fit the SongUNet"),
])
def test_bad_input_gets_one_clear_checkpoint_error(make, message, tmp_path, marker):
    path = tmp_path / "bad.pkl"
    if make is not None:
        path.write_bytes(make(tmp_path, marker))
    with pytest.raises(CheckpointError, match=message):
        load_edm_pickle(path)


def test_unknown_teacher_name_lists_the_known_ones():
    with pytest.raises(CheckpointError, match="unknown teacher name 'edm:mnist'; known names: edm:cifar10-uncond"):
        load_edm_pickle("edm:mnist", registry=EDM_TEACHERS)


def test_plain_values_numpy_scalars_and_tensor_views_come_back_as_saved(tmp_path):
    """What the restricted unpickler rebuilds itself: numpy scalars (as Python numbers, numpy 1 and 2 spellings),
    tensor views with an offset and strides, parameters, torch.Size, sets, dtypes, storages of several dtypes."""
    base = torch.arange(24, dtype=torch.float64).reshape(4, 6)
    data = dict(f8=np.float64(0.25), f4=np.float32(1.5), i8=np.int64(-3), b1=np.bool_(True),
                view=base[1:, 2:5].t(), half=torch.tensor([1.5, -2.0], dtype=torch.float16),
                ints=torch.tensor([[1, 2], [3, 4]]), flags=torch.tensor([True, False]),
                param=torch.nn.Parameter(torch.ones(2, 3), requires_grad=False), size=torch.Size([2, 3]),
                dtype=torch.bfloat16, names={"a", "b"}, frozen=frozenset({1}), nested=[(1, (2, 3)), {"k": None}])
    raw = pickle.dumps(data, protocol=4)
    assert b"numpy._core.multiarray" in raw
    for path, blob in [(tmp_path / "np2.pkl", raw), (tmp_path / "np1.pkl", raw.replace(  # as numpy 1 wrote them
            b"\x8c\x16numpy._core.multiarray", b"\x8c\x15numpy.core.multiarray"))]:
        path.write_bytes(blob)
        got = read_snapshot(path)
        assert {k: got[k] for k in ("f8", "f4", "i8", "b1")} == dict(f8=0.25, f4=1.5, i8=-3, b1=True)
        assert type(got["f8"]) is float and type(got["i8"]) is int and type(got["b1"]) is bool
        for key in ("view", "half", "ints", "flags", "param"):
            assert got[key].dtype == data[key].dtype and torch.equal(got[key], data[key]), key
        assert got["view"].stride() == data["view"].stride() and type(got["param"]) is torch.nn.Parameter
        assert got["size"] == torch.Size([2, 3]) and got["dtype"] is torch.bfloat16
        assert got["names"] == {"a", "b"} and got["frozen"] == frozenset({1}) and got["nested"] == data["nested"]


DDPMPP = dict(model_type="SongUNet", model_channels=128, channel_mult_emb=4, num_blocks=4, attn_resolutions=[16],
              augment_dim=9, img_channels=3)


@pytest.mark.parametrize("kwargs", [
    dict(DDPMPP, img_resolution=32, label_dim=0, channel_mult=[2, 2, 2]),          # edm:cifar10-uncond
    dict(DDPMPP, img_resolution=32, label_dim=10, channel_mult=[2, 2, 2]),         # edm:cifar10-cond
    dict(DDPMPP, img_resolution=64, label_dim=0, channel_mult=[1, 2, 2, 2]),       # edm:ffhq64, edm:afhqv2-64
    dict(model_type="DhariwalUNet", img_resolution=64, img_channels=3, label_dim=1000, model_channels=192,
         channel_mult=[1, 2, 3, 4], num_blocks=3, attn_resolutions=[32, 16, 8]),   # edm:imagenet64-cond
    dict(img_resolution=64, img_channels=4, label_dim=1000, model_channels=448, channel_mult=[1, 2, 3, 4],
         num_blocks=3, attn_resolutions=[16, 8]),                                  # EDM2-XXL (latents), the largest
], ids=["cifar10-uncond", "cifar10-cond", "ffhq-afhq-64", "imagenet64-adm", "edm2-xxl"])
def test_architecture_limits_admit_every_real_edm_network(kwargs):
    check_limits(kwargs)


@pytest.mark.parametrize("change,message", [
    (dict(num_blocks=17), "num_blocks = 17"), (dict(img_resolution=2048), "img_resolution = 2048"),
    (dict(label_dim=100_001), "label_dim = 100001"), (dict(model_channels=2048, channel_mult=[1, 8]),
                                                       "model_channels \\* max\\(channel_mult\\) = 16384"),
    (dict(channel_mult=[1] * 9), "channel_mult"), (dict(num_blocks=True), "num_blocks = True"),
])
def test_architecture_limits_refuse_sizes_beyond_them(change, message):
    with pytest.raises(CheckpointError, match=f"recorded {message}.*ARCHITECTURE_LIMITS"):
        check_limits({**DDPMPP, "img_resolution": 32, "label_dim": 0, "channel_mult": [2, 2, 2], **change})
