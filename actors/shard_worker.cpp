#include "actors/shard_worker.hpp"

#include <map>
#include <memory>

#include "actors/errors.hpp"
#include "engine/comm/nccl_communicator.hpp"
#include "engine/comm/tcp_communicator.hpp"
#include "engine/common/error.hpp"
#include "engine/model/model.hpp"
#include "engine/runner/model_runner.hpp"
#include "engine/sampling/sampler.hpp"

namespace shoal::actors {

namespace {

struct shard_state {
  shard_setup setup;
  std::unique_ptr<model> mdl;
  std::unique_ptr<kernels::backend> backend;
  std::unique_ptr<tcp_communicator> comm;        // communicator tcp
  std::unique_ptr<nccl_communicator> nccl_comm;  // communicator nccl
  std::unique_ptr<model_runner> runner;
  std::map<std::string, std::unique_ptr<sampler>> samplers;  // rank 0 only
  std::vector<float> logits;
  static inline const char* name = "shard_worker";
};

shard_spec spec_of(const shard_setup& s) {
  return shard_spec{s.rank, s.world, parse_parallel_mode(s.parallel)};
}

caf::result<step_result> run_step(shard_state& st, const step_request& req) {
  step_result res;
  res.step = req.step;
  if (!st.runner) return make_error(errc::unavailable, "the shard worker is not set up");
  const bool sampling = st.setup.rank == 0;
  const std::int64_t n_valid = std::min<std::int64_t>(st.mdl->config().vocab_size, st.mdl->tok().vocab_size());
  for (const auto& id : req.dropped) st.samplers.erase(id);
  if (sampling) {
    for (const auto& a : req.added) {
      auto s = std::make_unique<sampler>(a.sampling, n_valid);
      for (auto t : a.prompt) s->observe(t, false);
      st.samplers[a.id] = std::move(s);
    }
  }
  forward_batch batch;
  for (const auto& item : req.items) {
    for (std::size_t j = 0; j < item.tokens.size(); ++j) {
      batch.add(item.tokens[j], item.start + static_cast<std::int32_t>(j), item.blocks,
                item.sample && j + 1 == item.tokens.size());
    }
  }
  try {
    st.runner->forward(batch, st.logits);
  } catch (const std::exception& e) {
    return make_error(e);
  }
  if (sampling) {
    const std::int64_t V = st.mdl->config().vocab_size;
    std::size_t row = 0;
    for (const auto& item : req.items) {
      if (!item.sample) continue;
      auto it = st.samplers.find(item.id);
      if (it == st.samplers.end()) return make_error(errc::internal, "no sampler state for sequence " + item.id);
      std::span<float> l(st.logits.data() + row * V, static_cast<std::size_t>(V));
      const std::int32_t tok = it->second->sample(l);
      it->second->observe(tok, true);
      res.sampled.push_back(tok);
      ++row;
    }
  }
  return res;
}

// `unused`: CAF 0.17 dereferences a null argument tuple when a function actor is spawned without
// arguments, which UBSan (tools/check --sanitize) stops at.
shard_worker_actor::behavior_type shard_worker(shard_worker_actor::stateful_pointer<shard_state> self,
                                               int /*unused*/) {
  return {
      [=](setup_atom, const shard_setup& s) -> caf::result<std::int32_t> {
        auto& st = self->state;
        try {
          st.setup = s;
          st.mdl = model::load(s.model_path);
          st.backend = kernels::make_cpu_backend(std::max(1, s.threads));
          if (s.world > 1) {
            check_shard(*st.mdl, spec_of(s));  // a split that cannot work fails here, before the ring
            if (s.communicator == "nccl") {
              std::string why;
              if (!nccl_available(why)) throw error(errc::unavailable, "NCCL is unavailable here: " + why);
              return std::int32_t{0};  // no port: the ranks join with rank 0's unique id instead
            }
            st.comm = std::make_unique<tcp_communicator>(s.rank, s.world, s.bind_host);
            return st.comm->port();
          }
          st.runner = std::make_unique<model_runner>(*st.mdl, *st.backend, shard_spec{0, 1}, nullptr,
                                                     kv_cache_options{s.block_size, s.num_blocks});
          return std::int32_t{0};
        } catch (const std::exception& e) {
          return make_error(e);
        }
      },
      [=](connect_atom, const std::vector<std::string>& addresses) -> caf::result<bool> {
        auto& st = self->state;
        try {
          if (st.setup.world > 1) {
            st.comm->connect(addresses, std::chrono::seconds(60));
            st.runner = std::make_unique<model_runner>(*st.mdl, *st.backend, spec_of(st.setup),
                                                       st.comm.get(),
                                                       kv_cache_options{st.setup.block_size, st.setup.num_blocks});
          }
          return true;
        } catch (const std::exception& e) {
          return make_error(e);
        }
      },
      [=](nccl_id_atom) -> caf::result<std::string> {
        auto& st = self->state;
        if (!st.mdl || st.setup.communicator != "nccl" || st.setup.rank != 0) {
          return make_error(errc::internal, "only a set-up NCCL rank 0 makes the unique id");
        }
        try {
          return nccl_unique_id();
        } catch (const std::exception& e) {
          return make_error(e);
        }
      },
      [=](nccl_join_atom, const std::string& unique_id) -> caf::result<bool> {
        auto& st = self->state;
        if (!st.mdl || st.setup.communicator != "nccl") {
          return make_error(errc::internal, "the shard worker is not set up for NCCL");
        }
        try {
          // Blocks this (detached) worker until every rank has joined.
          st.nccl_comm = std::make_unique<nccl_communicator>(st.setup.rank, st.setup.world, unique_id);
          st.runner = std::make_unique<model_runner>(*st.mdl, *st.backend, spec_of(st.setup), st.nccl_comm.get(),
                                                     kv_cache_options{st.setup.block_size, st.setup.num_blocks});
          return true;
        } catch (const std::exception& e) {
          return make_error(e);
        }
      },
      [=](step_atom, const step_request& req) -> caf::result<step_result> { return run_step(self->state, req); },
  };
}

}  // namespace

shard_worker_actor spawn_shard_worker(caf::actor_system& sys) {
  return sys.spawn<caf::detached>(shard_worker, 0);
}

}  // namespace shoal::actors
