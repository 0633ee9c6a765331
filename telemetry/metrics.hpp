#pragma once
// Serving metrics, named like vLLM's with a `shoal:` prefix so existing dashboards translate
// (vllm:num_requests_running -> shoal:num_requests_running, ...). One registry per node; each
// replica's batcher owns one serving_metrics labelled with its model and replica.

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <memory>
#include <string>

namespace shoal::telemetry {

struct serving_metrics {
  serving_metrics(prometheus::Registry& registry, const std::string& model, const std::string& replica);

  prometheus::Gauge& running;         // shoal:num_requests_running
  prometheus::Gauge& waiting;         // shoal:num_requests_waiting
  prometheus::Gauge& kv_usage;        // shoal:kv_cache_usage_perc (0..1, vLLM's gpu_cache_usage_perc)
  prometheus::Counter& prompt_tokens;       // shoal:prompt_tokens_total
  prometheus::Counter& generation_tokens;   // shoal:generation_tokens_total
  prometheus::Counter& preemptions;         // shoal:num_preemptions_total
  prometheus::Histogram& ttft;              // shoal:time_to_first_token_seconds
  prometheus::Histogram& inter_token;       // shoal:time_per_output_token_seconds
  prometheus::Histogram& e2e;               // shoal:e2e_request_latency_seconds
  prometheus::Histogram& queue_time;        // shoal:request_queue_time_seconds
  prometheus::Family<prometheus::Counter>& finished;  // shoal:request_success_total{finished_reason}
  prometheus::Counter& finished_by(const std::string& reason);

 private:
  std::string model_, replica_;
};

/// Renders a registry in the Prometheus text format.
std::string render_metrics(prometheus::Registry& registry);

}  // namespace shoal::telemetry
