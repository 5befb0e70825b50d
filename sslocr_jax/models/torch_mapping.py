"""Key / layout mapping between our JAX state trees and flat PyTorch state dicts (numpy only;
`load_torch_state` reads `.pth` files with torch, imported when called).

The JAX side is the state layout of a checkpoint, `{"params": ..., "model_state": ...}`
(train/checkpoint.py `restore_params`); the PyTorch side is a flat `{name: np.ndarray}` with
the official DiG names (docs/export.md; github.com/ayumiymk/DiG) and PyTorch layouts:

    DiG pretraining (methods/dig.py)            PyTorch prefix
      params/encoder                            encoder.*                 (ViT, below)
      model_state/ema/encoder                   momentum_encoder.*
      params/mim_head                           pix_decoder.{0,1,2,4}.*
      params/pix_projector + bs/pix_projector   pix_projector.{3l,3l+1}.*
      ema/pix_projector + bs/pix_projector_m    pix_projector_m.*
      params/projector + bs/projector           encoder_projection_layer.*
      ema/projector + bs/projector_m            momentum_projection_layer.*
      params/predictor + bs/predictor           predictor.*
    Recognition (methods/recognition.py)
      params/encoder (+ bs/encoder)             encoder.*  (ViT; or the CNN+BiLSTM below)
      params/decoder/linear_norm (transformer)  linear_norm.{0,1}.*
      params/decoder/...                        decoder.*
    Recognition, transformer style "dig" (models/decoders.py DigTransformerDecoder: the
    official DiG fine-tuned `RecModel` = ViT + final norm, linear_norm, `TFDecoder`)
      params/decoder/encoder_norm               encoder.norm.*   (the fine-tuned ViT's last LN)
      params/decoder/linear_norm                linear_norm.{0,1}.*
      params/decoder/...                        decoder.*  (trg_word_emb, layer_stack.N.{norm1,
                                                norm2,norm3,self_attn,enc_attn,mlp}, layer_norm,
                                                classifier; names as the release)
      (fixed, written on export)                decoder.position_enc.position_table [1, n, d]

(bs = model_state/batch_stats.) Within a network, module names keep their names with
`name_{i}` -> `name.i` (`blocks_3` -> `blocks.3`, `layer_stack_0` -> `layer_stack.0`,
`layers_1` -> `1`); BN-MLP heads (models/heads.py `MLP`) map `linear_{l}` -> `3l`,
`bn_{l}` -> `3l+1`; the SimMIM head `linear_0, linear_1, norm, linear_2` -> `0, 1, 2, 4`.
Leaves: Dense `kernel [in, out]` -> `weight [out, in]`; Conv `kernel` HWIO -> `weight` OIHW;
LayerNorm / BatchNorm `scale` -> `weight`; `embedding` -> `weight`; BatchNorm `mean` / `var`
-> `running_mean` / `running_var` (plus `num_batches_tracked`, written as 0, optional on
import); other leaves (`mask_token`, `q_bias`, `v_bias`, `bias`) keep their names.

Recurrent cells are regrouped into PyTorch's fused layout:
  attention decoder `cell/gru/{ir,iz,in,hr,hz,hn}` -> `decoder.cell.gru.{weight,bias}_{ih,hh}`
    (nn.GRUCell; rows r, z, n; flax has no hidden bias for r, z: exported as zeros, folded
    into the input bias on import);
  CNN+BiLSTM `lstm_{l}/{forward,backward}/{ii..io, hi..ho}` ->
    `encoder.SequenceModeling.{l}.rnn.{weight,bias}_{ih,hh}_l0[_reverse]` (nn.LSTM; rows
    i, f, g, o; the flax per-gate bias goes to `bias_ih`, `bias_hh` is zeros on export and
    summed into it on import); `lstm_{l}/linear` -> `SequenceModeling.{l}.linear`;
  the CNN follows clovaai: `cnn/*` -> `encoder.FeatureExtraction.ConvNet.*`,
    `layer{s}_{j}` -> `layer{s}.{j}`, `downsample_{conv,bn}` -> `downsample.{0,1}`; the TPS
    `tps/loc_{conv,bn}_{i}` -> `encoder.Transformation.LocalizationNetwork.conv.{4i,4i+1}`,
    `tps/loc_fc1` -> `...localization_fc1.0`, `tps/loc_fc2` -> `...localization_fc2` (the grid
    matrix is fixed and not stored; our grid is clovaai's with align_corners=False).

BatchNorm `running_var`: PyTorch accumulates the unbiased batch variance, flax the biased
one. The stored values are copied as they are (export / import are exact); only statistics
accumulated by further training differ by the factor N / (N - 1).

Which networks a method exports is declared by the method (`export_networks(config)`:
[(torch prefix, [jax roots], style)] and fixed tables; docs/interfaces.md); the encoder's spec
is `encoder_spec(config)`. train/torch_state.py binds these to the method of a config:

    plan = make_plan(flat_shapes, specs, fixed)            # list of Entry
    flat = export_state(state, specs, fixed)               # {torch name: np.ndarray}
    state = import_state(flat, target, specs, fixed, include)  # {"params", "model_state"}
"""

import dataclasses
import os
import re
from typing import Callable

import numpy as np

from sslocr_jax import errors
from sslocr_jax import posembed

OPTIONAL_SUFFIXES = ("num_batches_tracked",)
DIG_TABLE_KEY = "decoder.position_enc.position_table"
# The last LayerNorm of a fine-tuned DiG ViT: not part of our encoder (a dig-style decoder
# holds it as `encoder_norm`); skipped when only the encoder is imported (init_from).
FINETUNE_ENCODER_NORM = ("encoder.norm.weight", "encoder.norm.bias")
# Fixed sin-cos tables some PyTorch releases store (buffers / frozen params): not ours to
# import; accepted when they hold the fixed table, an error otherwise (a learned embedding).
IGNORED_SUFFIXES = ("position_enc.position_table", "pos_embed")


class KeyMismatchError(ValueError):
  """A state dict whose keys or shapes do not match the model (lists every offending key)."""

  def __init__(self, message, missing=(), unknown=(), shapes=()):
    super().__init__(message)
    self.missing, self.unknown, self.shapes = list(missing), list(unknown), list(shapes)


@dataclasses.dataclass
class Entry:
  """torch_keys <-> jax_keys; `fwd(jax arrays) -> torch arrays`, `inv` the reverse."""

  torch_keys: tuple
  jax_keys: tuple
  fwd: Callable
  inv: Callable
  optional: bool = False


# ----------------------------------------------------------------------------- trees
def flatten(tree, prefix: str = "") -> dict:
  """{"a/b/c": leaf} of a nested mapping (flax boxed values are unboxed)."""
  out = {}
  if hasattr(tree, "unbox") and not isinstance(tree, dict):
    tree = tree.unbox()
  if hasattr(tree, "items"):
    for k, v in tree.items():
      out.update(flatten(v, f"{prefix}{k}/"))
    return out
  out[prefix[:-1]] = tree
  return out


def unflatten(flat: dict) -> dict:
  out = {}
  for key, v in flat.items():
    node = out
    parts = key.split("/")
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = v
  return out


def _get(config, key, default=None):
  if isinstance(config, dict):
    return config.get(key, default)
  return config.get(key, default) if hasattr(config, "get") else getattr(config, key, default)


# ----------------------------------------------------------------------------- transforms
def _ident(a):
  return [np.asarray(a[0])]


def _t(a):
  return [np.ascontiguousarray(np.asarray(a[0]).T)]


def _conv_fwd(a):  # HWIO -> OIHW
  return [np.ascontiguousarray(np.asarray(a[0]).transpose(3, 2, 0, 1))]


def _conv_inv(a):  # OIHW -> HWIO
  return [np.ascontiguousarray(np.asarray(a[0]).transpose(2, 3, 1, 0))]


def _module_name(seg: str, style: str) -> str:
  if style == "mlp":
    m = re.fullmatch(r"(linear|bn)_(\d+)", seg)
    if m:
      return str(3 * int(m.group(2)) + (m.group(1) == "bn"))
  if style == "mim":
    table = {"linear_0": "0", "linear_1": "1", "norm": "2", "linear_2": "4"}
    if seg in table:
      return table[seg]
  if style == "resnet":
    m = re.fullmatch(r"loc_(conv|bn)_(\d+)", seg)
    if m:
      return f"conv.{4 * int(m.group(2)) + (m.group(1) == 'bn')}"
    table = {
      "tps": "Transformation.LocalizationNetwork",
      "loc_fc1": "localization_fc1.0",
      "loc_fc2": "localization_fc2",
    }
    if seg in table:
      return table[seg]
    if seg == "cnn":
      return "FeatureExtraction.ConvNet"
    if seg == "downsample_conv":
      return "downsample.0"
    if seg == "downsample_bn":
      return "downsample.1"
    m = re.fullmatch(r"(layer\d)_(\d+)", seg)
    if m:
      return f"{m.group(1)}.{m.group(2)}"
    m = re.fullmatch(r"lstm_(\d+)", seg)
    if m:
      return f"SequenceModeling.{m.group(1)}"
  m = re.fullmatch(r"layers_(\d+)", seg)
  if m:
    return m.group(1)
  m = re.fullmatch(r"(blocks|layer_stack)_(\d+)", seg)
  if m:
    return f"{m.group(1)}.{m.group(2)}"
  return seg


def _leaf_entry(torch_prefix: str, jax_key: str, rel: tuple, shape, style: str) -> Entry:
  mods = ".".join(_module_name(s, style) for s in rel[:-1])
  leaf = rel[-1]
  fwd, inv = _ident, _ident
  name = {
    "scale": "weight",
    "embedding": "weight",
    "mean": "running_mean",
    "var": "running_var",
  }.get(leaf, leaf)
  if leaf == "kernel":
    name = "weight"
    if len(shape) == 2:
      fwd, inv = _t, _t
    elif len(shape) == 4:
      fwd, inv = _conv_fwd, _conv_inv
  key = torch_prefix + (mods + "." if mods else "") + name
  return Entry((key,), (jax_key,), fwd, inv)


def _gru_entries(torch_prefix: str, base: str) -> list:
  """flax GRUCell at jax path `base` -> nn.GRUCell (rows r, z, n)."""
  k = lambda g, leaf: f"{base}/{g}/{leaf}"
  ins, hids = ("ir", "iz", "in"), ("hr", "hz", "hn")

  def w_fwd(a):
    return [np.ascontiguousarray(np.concatenate([np.asarray(x).T for x in a], 0))]

  def w_inv(a):
    return [np.ascontiguousarray(x.T) for x in np.split(np.asarray(a[0]), 3, 0)]

  def b_fwd(a):
    b_ir, b_iz, b_in, b_hn = (np.asarray(x) for x in a)
    z = np.zeros_like(b_hn)
    return [np.concatenate([b_ir, b_iz, b_in]), np.concatenate([z, z, b_hn])]

  def b_inv(a):
    ih, hh = np.split(np.asarray(a[0]), 3), np.split(np.asarray(a[1]), 3)
    return [ih[0] + hh[0], ih[1] + hh[1], ih[2], hh[2]]

  return [
    Entry((torch_prefix + "weight_ih",), tuple(k(g, "kernel") for g in ins), w_fwd, w_inv),
    Entry((torch_prefix + "weight_hh",), tuple(k(g, "kernel") for g in hids), w_fwd, w_inv),
    Entry(
      (torch_prefix + "bias_ih", torch_prefix + "bias_hh"),
      (k("ir", "bias"), k("iz", "bias"), k("in", "bias"), k("hn", "bias")),
      b_fwd,
      b_inv,
    ),
  ]


def _lstm_entries(torch_prefix: str, base: str, suffix: str) -> list:
  """flax OptimizedLSTMCell at `base` -> one direction of nn.LSTM (rows i, f, g, o)."""
  gates = ("i", "f", "g", "o")

  def w_fwd(a):
    return [np.ascontiguousarray(np.concatenate([np.asarray(x).T for x in a], 0))]

  def w_inv(a):
    return [np.ascontiguousarray(x.T) for x in np.split(np.asarray(a[0]), 4, 0)]

  def b_fwd(a):
    b = np.concatenate([np.asarray(x) for x in a])
    return [b, np.zeros_like(b)]

  def b_inv(a):
    return list(np.split(np.asarray(a[0]) + np.asarray(a[1]), 4))

  return [
    Entry(
      (f"{torch_prefix}weight_ih_l0{suffix}",),
      tuple(f"{base}/i{g}/kernel" for g in gates),
      w_fwd,
      w_inv,
    ),
    Entry(
      (f"{torch_prefix}weight_hh_l0{suffix}",),
      tuple(f"{base}/h{g}/kernel" for g in gates),
      w_fwd,
      w_inv,
    ),
    Entry(
      (f"{torch_prefix}bias_ih_l0{suffix}", f"{torch_prefix}bias_hh_l0{suffix}"),
      tuple(f"{base}/h{g}/bias" for g in gates),
      b_fwd,
      b_inv,
    ),
  ]


def _bn_counter(torch_mean_key: str) -> Entry:
  key = torch_mean_key[: -len("running_mean")] + "num_batches_tracked"
  return Entry((key,), (), lambda a: [np.zeros((), np.int64)], lambda a: [], optional=True)


def _network_entries(torch_prefix: str, roots: list, flat_shapes: dict, style: str) -> list:
  """Entries for the JAX leaves under each root path (e.g. params/encoder and
  model_state/batch_stats/encoder) of one network."""
  entries, done = [], set()
  for root in roots:
    keys = sorted(k for k in flat_shapes if k.startswith(root + "/"))
    for key in keys:
      if key in done:
        continue
      rel = tuple(key[len(root) + 1 :].split("/"))
      if style == "attention" and "gru" in rel:
        i = rel.index("gru")
        base = root + "/" + "/".join(rel[: i + 1])
        tp = torch_prefix + ".".join(rel[: i + 1]) + "."
        group = _gru_entries(tp, base)
      elif (
        style == "resnet"
        and len(rel) >= 3
        and rel[0].startswith("lstm_")
        and rel[1] in ("forward", "backward")
      ):
        base = f"{root}/{rel[0]}/{rel[1]}"
        tp = f"{torch_prefix}{_module_name(rel[0], style)}.rnn."
        group = _lstm_entries(tp, base, "" if rel[1] == "forward" else "_reverse")
      else:
        group = [_leaf_entry(torch_prefix, key, rel, flat_shapes[key], style)]
        if rel[-1] == "mean":
          group.append(_bn_counter(group[0].torch_keys[0]))
      for e in group:
        done.update(e.jax_keys)
      entries += group
  return entries


# ----------------------------------------------------------------------------- plans
def _encoder_style(config) -> str:
  model = _get(config, "model")
  name = _get(model, "name", "vit") if model is not None else "vit"
  return "resnet" if name == "resnet" else "vit"


def encoder_spec(config) -> tuple:
  """(torch prefix, [jax roots], style) of the encoder every method has."""
  return ("encoder.", ["params/encoder", "model_state/batch_stats/encoder"], _encoder_style(config))


def _fixed_entry(key: str, table: np.ndarray) -> Entry:
  """A fixed array the PyTorch model stores (written on export, optional on import)."""
  return Entry((key,), (), lambda a: [table.copy()], lambda a: [], optional=True)


def make_plan(flat_shapes: dict, specs: list, fixed: dict | None = None) -> list:
  """Entries mapping the JAX leaves `{"params/...": shape}` onto the PyTorch keys of the
  networks `specs` [(torch prefix, [jax roots], style)], plus the `fixed` {torch key: array}."""
  entries, taken = [], set()
  for prefix, roots, style in specs:
    sub = {k: v for k, v in flat_shapes.items() if k not in taken}
    es = _network_entries(prefix, roots, sub, style)
    for e in es:
      taken.update(e.jax_keys)
    entries += es
  entries += [_fixed_entry(k, np.asarray(v)) for k, v in (fixed or {}).items()]
  return entries


def _shapes(flat: dict) -> dict:
  return {k: tuple(np.shape(v)) for k, v in flat.items()}


# ----------------------------------------------------------------------------- export
def export_state(state, specs: list, fixed: dict | None = None) -> dict:
  """State tree `{"params", "model_state"}` -> flat `{torch name: np.ndarray}` (float32 as
  stored; `num_batches_tracked` int64)."""
  flat = {k: np.asarray(v) for k, v in flatten(state).items()}
  out = {}
  for e in make_plan(_shapes(flat), specs, fixed):
    for key, arr in zip(e.torch_keys, e.fwd([flat[k] for k in e.jax_keys])):
      out[key] = np.ascontiguousarray(arr)
  return out


# ----------------------------------------------------------------------------- import
def _ignored(key: str) -> bool:
  return key.endswith(IGNORED_SUFFIXES)


def _is_sincos(table) -> bool:
  t = np.asarray(table, np.float64)
  t = t.reshape(t.shape[-2:]) if t.ndim >= 2 else t
  return t.ndim == 2 and bool(np.allclose(t, posembed.sincos_1d(*t.shape), atol=1e-4))


def import_state(
  flat: dict,
  target: dict,
  specs: list,
  fixed: dict | None = None,
  include: str = "all",
  *,
  what: str = "model",
  show: int = 50,
) -> dict:
  """Flat PyTorch state dict -> `{"params": ..., "model_state": ...}` numpy trees holding the
  networks `specs` of the model whose leaves are `target` {jax key: (shape, dtype)}
  (include="encoder": `specs` is the encoder's, other networks' keys are ignored).

  Raises KeyMismatchError naming every missing key, unknown key and shape mismatch.
  """
  plan = make_plan({k: s for k, (s, _) in target.items()}, specs, fixed)
  expected = {k for e in plan for k in e.torch_keys}
  prefixes = tuple(p for p, _, _ in specs)
  missing = [k for e in plan if not e.optional for k in e.torch_keys if k not in flat]
  relevant = [k for k in flat if include == "all" or k.startswith(prefixes)]
  if include == "encoder":  # a fine-tuned DiG file as init_from: its final norm is not ours
    relevant = [k for k in relevant if k not in FINETUNE_ENCODER_NORM or k in expected]
  unknown = [k for k in relevant if k not in expected and not _ignored(k)]
  unknown += [
    f"{k} {tuple(np.shape(flat[k]))} (not the fixed sin-cos table: a learned "
    "position embedding is not supported)"
    for k in relevant
    if _ignored(k) and not _is_sincos(flat[k])
  ]
  out, shapes = {}, []
  if not missing:
    for e in plan:
      if not e.jax_keys:
        continue
      try:
        arrays = e.inv([np.asarray(flat[k]) for k in e.torch_keys])
      except ValueError as err:  # an array that cannot be split / transposed as expected
        shapes.append(f"{', '.join(e.torch_keys)}: {err}")
        continue
      for k, a in zip(e.jax_keys, arrays):
        want, dtype = target[k]
        if tuple(a.shape) != want:
          got = ", ".join(f"{t} {tuple(np.shape(flat[t]))}" for t in e.torch_keys)
          shapes.append(f"{got} -> {k} needs {want}, got {tuple(a.shape)}")
        else:
          out[k] = np.asarray(a, dtype)
  if missing or unknown or shapes:

    def block(title, items):
      if not items:
        return []
      more = [f"  ... and {len(items) - show} more"] if len(items) > show else []
      return [f"{title} ({len(items)}):"] + [f"  {x}" for x in items[:show]] + more

    lines = (
      block("missing keys", missing)
      + block("unknown keys", unknown)
      + block("shape mismatches", shapes)
    )
    raise KeyMismatchError(
      f"state dict does not match the {what} (include={include!r}):\n" + "\n".join(lines),
      missing,
      unknown,
      shapes,
    )
  tree = unflatten(out)
  tree.setdefault("params", {})
  tree.setdefault("model_state", {})
  return tree


# ----------------------------------------------------------------------------- files
def load_torch_state(path: str) -> dict:
  """A flat `{name: np.ndarray}` from a `.safetensors` (safetensors.numpy) or a `torch.save`
  file (`.pth` / `.pt`, needs torch; weights under "model" / "state_dict" when present).
  A DistributedDataParallel `module.` prefix is removed."""
  if not os.path.isfile(path):
    raise errors.MissingPath(f"PyTorch state dict {path!r} does not exist")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

    flat = load_file(path)
  else:
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(
        f"reading {path} needs PyTorch (pip install 'sslocr_jax[torch]'), "
        "or convert it to .safetensors"
      ) from e
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
      if isinstance(obj, dict) and isinstance(obj.get(key), dict):
        obj = obj[key]
        break
    flat = {k: v.detach().cpu().numpy() for k, v in obj.items() if hasattr(v, "detach")}
  if flat and all(k.startswith("module.") for k in flat):
    flat = {k[len("module.") :]: v for k, v in flat.items()}
  return flat


def is_torch_file(path: str) -> bool:
  return str(path).endswith((".safetensors", ".pth", ".pt", ".bin"))
