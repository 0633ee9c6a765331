#include "actors/messages.hpp"

#include "actors/auditor.hpp"
#include "actors/batcher.hpp"
#include "actors/cache.hpp"
#include "actors/errors.hpp"
#include "actors/node_manager.hpp"
#include "actors/shard_worker.hpp"

namespace shoal::actors {

void register_message_types(caf::actor_system_config& cfg) {
  add_error_category(cfg);
  cfg.add_message_type<sampling_params>("shoal::sampling_params");
  cfg.add_message_type<token_chunk>("shoal::token_chunk");
  cfg.add_message_type<generation_summary>("shoal::generation_summary");
  cfg.add_message_type<sink_actor>("shoal::sink_actor");
  cfg.add_message_type<generate_request>("shoal::generate_request");
  cfg.add_message_type<submit_result>("shoal::submit_result");
  cfg.add_message_type<tokenize_request>("shoal::tokenize_request");
  cfg.add_message_type<replica_stats>("shoal::replica_stats");
  cfg.add_message_type<std::vector<replica_stats>>("std::vector<shoal::replica_stats>");
  cfg.add_message_type<cluster_status>("shoal::cluster_status");
  cfg.add_message_type<admin_request>("shoal::admin_request");
  cfg.add_message_type<admin_result>("shoal::admin_result");
  cfg.add_message_type<door_caller>("shoal::door_caller");
  cfg.add_message_type<auth_result>("shoal::auth_result");
  cfg.add_message_type<door_refusal>("shoal::door_refusal");
  cfg.add_message_type<shard_setup>("shoal::shard_setup");
  cfg.add_message_type<seq_setup>("shoal::seq_setup");
  cfg.add_message_type<std::vector<seq_setup>>("std::vector<shoal::seq_setup>");
  cfg.add_message_type<step_item>("shoal::step_item");
  cfg.add_message_type<std::vector<step_item>>("std::vector<shoal::step_item>");
  cfg.add_message_type<step_request>("shoal::step_request");
  cfg.add_message_type<step_result>("shoal::step_result");
  cfg.add_message_type<std::vector<std::int32_t>>("std::vector<int32_t>");
  cfg.add_message_type<std::vector<std::string>>("std::vector<std::string>");
  // Typed actor handles travel in messages too (a spawned shard worker, a replica's batcher).
  cfg.add_message_type<shard_worker_actor>("shoal::shard_worker_actor");
  cfg.add_message_type<node_manager_actor>("shoal::node_manager_actor");
  cfg.add_message_type<batcher_actor>("shoal::batcher_actor");
  cfg.add_message_type<stats_listener>("shoal::stats_listener");
  cfg.add_message_type<cache_actor>("shoal::cache_actor");
  cfg.add_message_type<auditor_actor>("shoal::auditor_actor");
}

}  // namespace shoal::actors
