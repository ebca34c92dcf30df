#pragma once
// telemetry::registry — counters, gauges and histograms exposed in the
// Prometheus text format 0.0.4 (docs/metrics.md).
//
// A family has a name, help text and a fixed list of label names; it owns one
// child per tuple of label values. The hot path takes a child once
// (`auto& c = family.labels({"peer-a"})`) and keeps the reference: an update
// is one relaxed atomic operation — no lock, no allocation, no lookup.
// labels() itself looks the tuple up under a shared lock and creates the child
// under an exclusive one, so call it at set-up, not per event, where you can.
//
// Lifetime: a child's memory lives as long as the registry, even after
// remove() (a removed child is retired, not freed), so a reference kept by a
// component that has not heard of the removal yet stays safe to update; its
// updates are simply no longer exported. References to families and children
// are stable; the registry must outlive every user of them.
//
// Programming errors — an invalid metric or label name, a duplicate family,
// a wrong number of label values, unsorted bucket bounds — throw
// std::invalid_argument. They are deterministic, so the first test that
// registers or uses the family finds them; no data path has to handle them.
//
// Threads: every member may be called from any thread. expose() may run
// concurrently with updates, labels(), remove() and other scrapes; it reads
// each atomic once, so a scrape is a consistent view per sample, not across
// samples (a histogram's _count always equals its +Inf bucket).

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace edgerelay::telemetry {

// A monotonically increasing count (segments, bytes, attempts).
class counter {
public:
  void inc(std::uint64_t n = 1) noexcept { value_.fetch_add(n, std::memory_order_relaxed); }
  // Publishes a total that is kept elsewhere (the store's persistent counters,
  // read in a collect hook). The caller keeps it monotonic; Prometheus reads a
  // decrease as a counter reset.
  void set(std::uint64_t total) noexcept { value_.store(total, std::memory_order_relaxed); }
  std::uint64_t value() const noexcept { return value_.load(std::memory_order_relaxed); }

private:
  std::atomic<std::uint64_t> value_{0};
};

// A value that goes up and down (queue depth, connected, a timestamp).
class gauge {
public:
  void set(double v) noexcept { value_.store(v, std::memory_order_relaxed); }
  void inc(double d = 1) noexcept { value_.fetch_add(d, std::memory_order_relaxed); }
  void dec(double d = 1) noexcept { value_.fetch_sub(d, std::memory_order_relaxed); }
  double value() const noexcept { return value_.load(std::memory_order_relaxed); }

private:
  std::atomic<double> value_{0};
};

// Observations counted into fixed buckets (upper bounds, inclusive, plus an
// implicit +Inf), with their sum. The bounds are fixed at family creation.
class histogram {
public:
  explicit histogram(std::span<const double> bounds);

  // Lock-free: a binary search over the bounds and two relaxed atomic adds.
  // NaN is ignored (it would poison the sum forever).
  void observe(double v) noexcept;
  template <class Rep, class Period>
  void observe(std::chrono::duration<Rep, Period> d) noexcept {
    observe(std::chrono::duration<double>(d).count());
  }

  std::span<const double> bounds() const noexcept { return bounds_; }
  // Observations in bucket i alone (not cumulative); i == bounds().size() is +Inf.
  std::uint64_t bucket_count(std::size_t i) const noexcept { return counts_[i].load(std::memory_order_relaxed); }
  std::uint64_t count() const noexcept;
  double sum() const noexcept { return sum_.load(std::memory_order_relaxed); }

private:
  std::span<const double> bounds_; // owned by the family
  std::unique_ptr<std::atomic<std::uint64_t>[]> counts_;
  std::atomic<double> sum_{0};
};

// 0.5 ms .. 60 s, roughly 1-2.5-5 per decade: delivery and request latencies.
std::span<const double> default_latency_buckets() noexcept;
// 0.1 ms .. 10 s: a durable commit (one fsync round) is usually sub-millisecond.
std::span<const double> default_commit_buckets() noexcept;

enum class metric_type { counter, gauge, histogram };
const char* to_string(metric_type t) noexcept;

namespace detail {

// What families share: name, help, label names, the child table and its lock.
// Keys are label-value tuples; std::map keeps the exposition sorted.
class family_base {
public:
  family_base(std::string name, std::string help, std::vector<std::string> label_names, metric_type type);
  virtual ~family_base() = default;
  family_base(const family_base&) = delete;
  family_base& operator=(const family_base&) = delete;

  const std::string& name() const noexcept { return name_; }
  const std::string& help() const noexcept { return help_; }
  const std::vector<std::string>& label_names() const noexcept { return label_names_; }
  metric_type type() const noexcept { return type_; }

  // Stops exporting the child with these label values; false when there is none.
  bool remove(std::initializer_list<std::string_view> values);
  bool remove_of(std::span<const std::string> values);
  // Stops exporting every child whose label `label_name` has this value (all
  // of a removed peer's children); returns how many. 0 when the family has no
  // such label.
  std::size_t remove_matching(std::string_view label_name, std::string_view value);
  // Stops exporting every child (an unlabelled family's single child included).
  void clear();
  std::size_t size() const;

  // Appends this family (HELP, TYPE and every sample) to out.
  void expose(std::string& out) const;

protected:
  struct child_base {
    virtual ~child_base() = default;
    std::vector<std::string> values;
  };
  using key = std::vector<std::string>;

  key make_key(std::initializer_list<std::string_view> values) const;
  key make_key(std::span<const std::string> values) const;
  // Finds or creates (with make()) the child for k.
  child_base& find_or_create(key k, const std::function<std::unique_ptr<child_base>()>& make);
  // Replaces any child for k with c.
  void put(key k, std::unique_ptr<child_base> c);
  // Appends one child's samples; `labels` is the rendered `name="value",...` list (may be empty).
  virtual void expose_child(const child_base& c, const std::string& labels, std::string& out) const = 0;

private:
  std::string name_;
  std::string help_;
  std::vector<std::string> label_names_;
  metric_type type_;
  mutable std::shared_mutex mu_;
  std::map<key, std::unique_ptr<child_base>> children_;
  std::vector<std::unique_ptr<child_base>> retired_; // removed children stay valid until destruction
};

} // namespace detail

class counter_family final : public detail::family_base {
public:
  counter_family(std::string name, std::string help, std::vector<std::string> label_names);
  // The child for these label values (one per label name, in order), created on first use.
  counter& labels(std::initializer_list<std::string_view> values = {});
  counter& labels_of(std::span<const std::string> values);
  // A child whose value is fn(), called at each scrape on the scraping thread
  // (without the family's lock held). Replaces any child with these values.
  // fn must be thread-safe and cheap; if it throws the sample is left out.
  void set_callback(std::initializer_list<std::string_view> values, std::function<std::uint64_t()> fn);

private:
  struct child;
  void expose_child(const child_base& c, const std::string& labels, std::string& out) const override;
};

class gauge_family final : public detail::family_base {
public:
  gauge_family(std::string name, std::string help, std::vector<std::string> label_names);
  gauge& labels(std::initializer_list<std::string_view> values = {});
  gauge& labels_of(std::span<const std::string> values);
  // As counter_family::set_callback: e.g. a queue depth read from the store at scrape.
  void set_callback(std::initializer_list<std::string_view> values, std::function<double()> fn);

private:
  struct child;
  void expose_child(const child_base& c, const std::string& labels, std::string& out) const override;
};

class histogram_family final : public detail::family_base {
public:
  // bounds: finite, strictly increasing, at least one; "le" is not a label name.
  histogram_family(std::string name, std::string help, std::vector<std::string> label_names,
                   std::span<const double> bounds);
  histogram& labels(std::initializer_list<std::string_view> values = {});
  histogram& labels_of(std::span<const std::string> values);
  std::span<const double> bounds() const noexcept { return bounds_; }

private:
  struct child;
  std::vector<double> bounds_;
  void expose_child(const child_base& c, const std::string& labels, std::string& out) const override;
};

// Owns the families. Registration is rare and locks; it throws
// std::invalid_argument on an invalid or duplicate name.
class registry {
public:
  registry() = default;
  registry(const registry&) = delete;
  registry& operator=(const registry&) = delete;
  ~registry();

  counter_family& add_counter(std::string name, std::string help, std::vector<std::string> label_names = {});
  gauge_family& add_gauge(std::string name, std::string help, std::vector<std::string> label_names = {});
  histogram_family& add_histogram(std::string name, std::string help, std::vector<std::string> label_names = {},
                                  std::span<const double> bounds = default_latency_buckets());

  // fn runs at the start of every expose(), on the scraping thread, before any
  // family is read: the place to take one snapshot of an external source (the
  // store's stats) and set() many counters and gauges from it. Hooks run one
  // scrape at a time, in the order they were added; a hook that throws is
  // skipped for that scrape.
  void add_collect_hook(std::function<void()> fn);

  // The whole registry in the Prometheus text format 0.0.4, families in
  // registration order, children sorted by label values.
  std::string expose() const;

  // The Content-Type header for expose()'s text.
  static constexpr std::string_view content_type = "text/plain; version=0.0.4; charset=utf-8";

private:
  template <class F, class... A>
  F& add(A&&... args);

  mutable std::mutex mu_; // families_ and hooks_
  std::vector<std::unique_ptr<detail::family_base>> families_;
  std::vector<std::function<void()>> hooks_;
  mutable std::mutex scrape_mu_; // one hook run at a time
};

// Validation and formatting used by the exposition, public for tests and for
// code that writes metric names.
bool valid_metric_name(std::string_view name) noexcept;
bool valid_label_name(std::string_view name) noexcept;
// A sample value as Prometheus reads it: "+Inf", "-Inf", "NaN", integers
// without exponent or fraction ("42", "-3"), else the shortest text that reads
// back to the same double ("0.25", "1e-07").
std::string format_value(double v);
// Appends v with backslash, double quote and newline escaped, and any byte
// sequence that is not valid UTF-8 replaced by U+FFFD (Prometheus rejects a
// scrape with invalid UTF-8).
void append_escaped_label_value(std::string& out, std::string_view v);

} // namespace edgerelay::telemetry
