// Attention over the paged KV cache in tiles (AVX-512): queries in tiles of one sequence's tokens x
// the query heads sharing a KV head, keys in tiles of 16 positions, an online softmax (flash
// attention's), so each key and value row is read once per query tile instead of once per query
// and head, and no score matrix is ever held. See attention_kernels.cpp.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/backend.hpp"

namespace shoal::kernels::cpu {

/// Whether the tiled kernel takes these arguments (head_dim a multiple of 16).
bool tiled_attention_fits(const attention_args& a);

/// One unit of tiled work: tokens [t0, t1) (all of one sequence) against one KV head.
struct attention_tile {
  std::int64_t t0 = 0, t1 = 0;
  std::int32_t kv_head = 0;
};

/// Splits a step's tokens into tiles: runs of consecutive tokens of one sequence, at most as many
/// as keep a tile's accumulators (tokens x heads per KV head x head_dim floats) near 256 KB, each
/// run once per KV head; the tiles with the most keys first, so the longest finish early.
std::vector<attention_tile> plan_attention_tiles(const attention_args& a, const std::int32_t* pos,
                                                 const std::int32_t* seq);

/// Runs one tile: writes out rows [t0, t1) for the query heads of tile.kv_head. `work` is the
/// calling thread's scratch (resized as needed).
void run_attention_tile(const attention_args& a, const std::int32_t* pos, const std::int32_t* seq,
                        const attention_tile& tile, std::vector<float>& work);

}  // namespace shoal::kernels::cpu
