#include "telemetry/metrics.hpp"

#include <prometheus/text_serializer.h>

namespace shoal::telemetry {

namespace {

prometheus::Labels labels(const std::string& model, const std::string& replica) {
  return {{"model_name", model}, {"replica", replica}};
}

const prometheus::Histogram::BucketBoundaries& latency_buckets() {
  static const prometheus::Histogram::BucketBoundaries b = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25,
                                                            0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0};
  return b;
}

}  // namespace

serving_metrics::serving_metrics(prometheus::Registry& r, const std::string& model, const std::string& replica)
    : running(prometheus::BuildGauge().Name("shoal:num_requests_running").Help("Requests in the running batch").Register(r).Add(labels(model, replica))),
      waiting(prometheus::BuildGauge().Name("shoal:num_requests_waiting").Help("Requests waiting to be scheduled").Register(r).Add(labels(model, replica))),
      kv_usage(prometheus::BuildGauge().Name("shoal:kv_cache_usage_perc").Help("KV-cache usage, 1 means 100 percent").Register(r).Add(labels(model, replica))),
      prompt_tokens(prometheus::BuildCounter().Name("shoal:prompt_tokens_total").Help("Prefill tokens processed").Register(r).Add(labels(model, replica))),
      generation_tokens(prometheus::BuildCounter().Name("shoal:generation_tokens_total").Help("Generation tokens produced").Register(r).Add(labels(model, replica))),
      preemptions(prometheus::BuildCounter().Name("shoal:num_preemptions_total").Help("Preemptions (recompute) of running requests").Register(r).Add(labels(model, replica))),
      ttft(prometheus::BuildHistogram().Name("shoal:time_to_first_token_seconds").Help("Time to first token").Register(r).Add(labels(model, replica), latency_buckets())),
      inter_token(prometheus::BuildHistogram().Name("shoal:time_per_output_token_seconds").Help("Inter-token latency").Register(r).Add(labels(model, replica), latency_buckets())),
      e2e(prometheus::BuildHistogram().Name("shoal:e2e_request_latency_seconds").Help("End-to-end request latency").Register(r).Add(labels(model, replica), latency_buckets())),
      queue_time(prometheus::BuildHistogram().Name("shoal:request_queue_time_seconds").Help("Time waiting before the first step").Register(r).Add(labels(model, replica), latency_buckets())),
      finished(prometheus::BuildCounter().Name("shoal:request_success_total").Help("Finished requests by reason").Register(r)),
      model_(model),
      replica_(replica) {}

prometheus::Counter& serving_metrics::finished_by(const std::string& reason) {
  auto l = labels(model_, replica_);
  l["finished_reason"] = reason;
  return finished.Add(l);
}

std::string render_metrics(prometheus::Registry& registry) {
  return prometheus::TextSerializer().Serialize(registry.Collect());
}

}  // namespace shoal::telemetry
