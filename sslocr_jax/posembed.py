"""Fixed sin-cos position tables (numpy only; used by the JAX models, the PyTorch modules of
export/ and the state-dict import).

    table = sincos_1d(num_positions, dim)          # [num_positions, dim] float32
    table = dig_position_table(n_position, dim)    # the official DiG decoder's table

Both put sin on even channels j and cos on odd ones, with angle(pos, j) =
pos / 10000^(2 (j // 2) / dim) ("Attention is all you need"; interleaved, not concatenated).
"""

import numpy as np


def sincos_1d(num_positions: int, dim: int) -> np.ndarray:
  """Fixed position table `[num_positions, dim]` float32 (ViT encoder, NRTR decoder).

  Computed in float64 like the official DiG numpy code (ayumiymk/DiG `get_sinusoid_encoding_
  table`), then cast.
  """
  pos = np.arange(num_positions, dtype=np.float64)[:, None]
  j = np.arange(dim)[None, :]
  angle = pos / np.power(10000.0, 2 * (j // 2) / dim)
  return np.where(j % 2 == 0, np.sin(angle), np.cos(angle)).astype(np.float32)


def dig_position_table(n_position: int, dim: int) -> np.ndarray:
  """The official DiG decoder's `PositionalEncoding.position_table` [n_position, dim], computed
  as there: float32 angles pos * (1 / 10000^(2 (j // 2) / dim)), sin on even j, cos on odd j
  (so it differs from `sincos_1d` in the last bits)."""
  j = np.arange(dim)
  inv = (1.0 / np.power(10000.0, 2 * (j // 2) / dim)).astype(np.float32)
  angle = np.arange(n_position, dtype=np.float32)[:, None] * inv[None, :]
  angle = angle.astype(np.float64)
  return np.where(j % 2 == 0, np.sin(angle), np.cos(angle)).astype(np.float32)
