#include "telemetry/metrics.hpp"

#include "telemetry/detail/utf8.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <system_error>

namespace edgerelay::telemetry {

namespace {

constexpr std::array<double, 16> latency_bounds{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                0.25,   0.5,   1,      2.5,   5,    10,    30,   60};
constexpr std::array<double, 16> commit_bounds{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                               0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};

bool is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }

[[noreturn]] void fail(const std::string& what) { throw std::invalid_argument("telemetry: " + what); }

void append_help(std::string& out, std::string_view help) {
  for (char c : help) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
}

void append_uint(std::string& out, std::uint64_t v) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

// `name{labels} value\n`, or `name value\n` without labels.
void append_sample(std::string& out, std::string_view name, std::string_view labels, std::string_view value) {
  out += name;
  if (!labels.empty()) {
    out += '{';
    out += labels;
    out += '}';
  }
  out += ' ';
  out += value;
  out += '\n';
}

} // namespace

// ------------------------------------------------------------ validation & formatting

bool valid_metric_name(std::string_view name) noexcept {
  if (name.empty()) return false;
  if (!is_name_start(name[0]) && name[0] != ':') return false;
  return std::all_of(name.begin() + 1, name.end(), [](char c) { return is_name_start(c) || is_digit(c) || c == ':'; });
}

bool valid_label_name(std::string_view name) noexcept {
  if (name.empty() || !is_name_start(name[0])) return false;
  if (name.starts_with("__")) return false; // reserved for Prometheus itself
  return std::all_of(name.begin() + 1, name.end(), [](char c) { return is_name_start(c) || is_digit(c); });
}

std::string format_value(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  // Integral values print as integers (no "1e+06" for a million bytes) as long
  // as they are exact in an int64.
  if (v == std::floor(v) && std::fabs(v) < 9.2e18) {
    auto r = std::to_chars(buf, buf + sizeof buf, static_cast<std::int64_t>(v));
    return std::string(buf, r.ptr);
  }
  // Like Go's strconv 'g' with shortest precision (what Prometheus' own
  // clients write, so `le` values match theirs): fixed notation from 1e-4 on,
  // exponent notation below.
  auto a = std::fabs(v);
  auto r = a >= 1e-4 && a < 1e21 ? std::to_chars(buf, buf + sizeof buf, v, std::chars_format::fixed)
                                 : std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  return std::string(buf, r.ptr);
}

void append_escaped_label_value(std::string& out, std::string_view v) {
  detail::for_each_utf8_piece(v, [&](std::string_view piece, bool valid) {
    if (!valid) {
      out += detail::replacement_character;
      return;
    }
    for (char c : piece) {
      if (c == '\\')
        out += "\\\\";
      else if (c == '"')
        out += "\\\"";
      else if (c == '\n')
        out += "\\n";
      else
        out += c;
    }
  });
}

const char* to_string(metric_type t) noexcept {
  switch (t) {
  case metric_type::counter: return "counter";
  case metric_type::gauge: return "gauge";
  case metric_type::histogram: return "histogram";
  }
  return "untyped";
}

std::span<const double> default_latency_buckets() noexcept { return latency_bounds; }
std::span<const double> default_commit_buckets() noexcept { return commit_bounds; }

// ------------------------------------------------------------ histogram

histogram::histogram(std::span<const double> bounds)
    : bounds_(bounds), counts_(new std::atomic<std::uint64_t>[bounds.size() + 1]) {
  for (std::size_t i = 0; i <= bounds.size(); ++i)
    counts_[i].store(0, std::memory_order_relaxed);
}

void histogram::observe(double v) noexcept {
  if (std::isnan(v)) return;
  // The first bound >= v: a bucket counts the observations up to and including its bound.
  auto i = static_cast<std::size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
  counts_[i].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(v, std::memory_order_relaxed);
}

std::uint64_t histogram::count() const noexcept {
  std::uint64_t n = 0;
  for (std::size_t i = 0; i <= bounds_.size(); ++i)
    n += bucket_count(i);
  return n;
}

// ------------------------------------------------------------ family_base

namespace detail {

family_base::family_base(std::string name, std::string help, std::vector<std::string> label_names, metric_type type)
    : name_(std::move(name)), help_(std::move(help)), label_names_(std::move(label_names)), type_(type) {
  if (!valid_metric_name(name_)) fail("invalid metric name \"" + name_ + "\"");
  for (std::size_t i = 0; i < label_names_.size(); ++i) {
    auto& l = label_names_[i];
    if (!valid_label_name(l)) fail(name_ + ": invalid label name \"" + l + "\"");
    if (type_ == metric_type::histogram && l == "le") fail(name_ + ": \"le\" is reserved in a histogram");
    for (std::size_t j = 0; j < i; ++j)
      if (label_names_[j] == l) fail(name_ + ": label \"" + l + "\" given twice");
  }
}

family_base::key family_base::make_key(std::initializer_list<std::string_view> values) const {
  if (values.size() != label_names_.size())
    fail(name_ + ": " + std::to_string(values.size()) + " label values given, " + std::to_string(label_names_.size()) +
         " label names");
  return key(values.begin(), values.end());
}

family_base::key family_base::make_key(std::span<const std::string> values) const {
  if (values.size() != label_names_.size())
    fail(name_ + ": " + std::to_string(values.size()) + " label values given, " + std::to_string(label_names_.size()) +
         " label names");
  return key(values.begin(), values.end());
}

family_base::child_base& family_base::find_or_create(key k, const std::function<std::unique_ptr<child_base>()>& make) {
  {
    std::shared_lock lk(mu_);
    if (auto it = children_.find(k); it != children_.end()) return *it->second;
  }
  std::unique_lock lk(mu_);
  auto [it, inserted] = children_.try_emplace(std::move(k));
  if (inserted) {
    it->second = make();
    it->second->values = it->first;
  }
  return *it->second;
}

void family_base::put(key k, std::unique_ptr<child_base> c) {
  c->values = k;
  std::unique_lock lk(mu_);
  auto& slot = children_[std::move(k)];
  if (slot) retired_.push_back(std::move(slot));
  slot = std::move(c);
}

bool family_base::remove(std::initializer_list<std::string_view> values) {
  auto k = make_key(values);
  std::unique_lock lk(mu_);
  auto it = children_.find(k);
  if (it == children_.end()) return false;
  retired_.push_back(std::move(it->second));
  children_.erase(it);
  return true;
}

bool family_base::remove_of(std::span<const std::string> values) {
  auto k = make_key(values);
  std::unique_lock lk(mu_);
  auto it = children_.find(k);
  if (it == children_.end()) return false;
  retired_.push_back(std::move(it->second));
  children_.erase(it);
  return true;
}

std::size_t family_base::remove_matching(std::string_view label_name, std::string_view value) {
  auto pos = std::find(label_names_.begin(), label_names_.end(), label_name);
  if (pos == label_names_.end()) return 0;
  auto i = static_cast<std::size_t>(pos - label_names_.begin());
  std::unique_lock lk(mu_);
  std::size_t n = 0;
  for (auto it = children_.begin(); it != children_.end();) {
    if (it->first[i] == value) {
      retired_.push_back(std::move(it->second));
      it = children_.erase(it);
      ++n;
    } else {
      ++it;
    }
  }
  return n;
}

void family_base::clear() {
  std::unique_lock lk(mu_);
  for (auto& [k, c] : children_)
    retired_.push_back(std::move(c));
  children_.clear();
}

std::size_t family_base::size() const {
  std::shared_lock lk(mu_);
  return children_.size();
}

void family_base::expose(std::string& out) const {
  // Children are never freed while the family lives (removed ones are
  // retired), so the pointers stay valid after the lock is released; callbacks
  // then run without it and may themselves use this family.
  std::vector<const child_base*> snapshot;
  {
    std::shared_lock lk(mu_);
    snapshot.reserve(children_.size());
    for (auto& [k, c] : children_)
      snapshot.push_back(c.get());
  }
  out += "# HELP ";
  out += name_;
  out += ' ';
  append_help(out, help_);
  out += "\n# TYPE ";
  out += name_;
  out += ' ';
  out += to_string(type_);
  out += '\n';
  std::string labels;
  for (auto* c : snapshot) {
    labels.clear();
    for (std::size_t i = 0; i < label_names_.size(); ++i) {
      if (i) labels += ',';
      labels += label_names_[i];
      labels += "=\"";
      append_escaped_label_value(labels, c->values[i]);
      labels += '"';
    }
    expose_child(*c, labels, out);
  }
}

} // namespace detail

// ------------------------------------------------------------ counter_family

struct counter_family::child final : child_base {
  counter value;
  std::function<std::uint64_t()> fn;
};

counter_family::counter_family(std::string name, std::string help, std::vector<std::string> label_names)
    : family_base(std::move(name), std::move(help), std::move(label_names), metric_type::counter) {
  if (this->label_names().empty()) labels();
}

counter& counter_family::labels(std::initializer_list<std::string_view> values) {
  auto& c = find_or_create(make_key(values), [] { return std::make_unique<child>(); });
  return static_cast<child&>(c).value;
}

counter& counter_family::labels_of(std::span<const std::string> values) {
  auto& c = find_or_create(make_key(values), [] { return std::make_unique<child>(); });
  return static_cast<child&>(c).value;
}

void counter_family::set_callback(std::initializer_list<std::string_view> values, std::function<std::uint64_t()> fn) {
  auto c = std::make_unique<child>();
  c->fn = std::move(fn);
  put(make_key(values), std::move(c));
}

void counter_family::expose_child(const child_base& cb, const std::string& labels, std::string& out) const {
  auto& c = static_cast<const child&>(cb);
  std::uint64_t v = 0;
  if (c.fn) {
    try {
      v = c.fn();
    } catch (...) {
      return;
    }
  } else {
    v = c.value.value();
  }
  std::string text;
  append_uint(text, v);
  append_sample(out, name(), labels, text);
}

// ------------------------------------------------------------ gauge_family

struct gauge_family::child final : child_base {
  gauge value;
  std::function<double()> fn;
};

gauge_family::gauge_family(std::string name, std::string help, std::vector<std::string> label_names)
    : family_base(std::move(name), std::move(help), std::move(label_names), metric_type::gauge) {
  if (this->label_names().empty()) labels();
}

gauge& gauge_family::labels(std::initializer_list<std::string_view> values) {
  auto& c = find_or_create(make_key(values), [] { return std::make_unique<child>(); });
  return static_cast<child&>(c).value;
}

gauge& gauge_family::labels_of(std::span<const std::string> values) {
  auto& c = find_or_create(make_key(values), [] { return std::make_unique<child>(); });
  return static_cast<child&>(c).value;
}

void gauge_family::set_callback(std::initializer_list<std::string_view> values, std::function<double()> fn) {
  auto c = std::make_unique<child>();
  c->fn = std::move(fn);
  put(make_key(values), std::move(c));
}

void gauge_family::expose_child(const child_base& cb, const std::string& labels, std::string& out) const {
  auto& c = static_cast<const child&>(cb);
  double v = 0;
  if (c.fn) {
    try {
      v = c.fn();
    } catch (...) {
      return;
    }
  } else {
    v = c.value.value();
  }
  append_sample(out, name(), labels, format_value(v));
}

// ------------------------------------------------------------ histogram_family

struct histogram_family::child final : child_base {
  explicit child(std::span<const double> bounds) : value(bounds) {}
  histogram value;
};

histogram_family::histogram_family(std::string name, std::string help, std::vector<std::string> label_names,
                                   std::span<const double> bounds)
    : family_base(std::move(name), std::move(help), std::move(label_names), metric_type::histogram),
      bounds_(bounds.begin(), bounds.end()) {
  if (bounds_.empty()) fail(this->name() + ": a histogram needs at least one bucket bound");
  for (std::size_t i = 0; i < bounds_.size(); ++i) {
    if (!std::isfinite(bounds_[i])) fail(this->name() + ": bucket bounds must be finite (+Inf is implicit)");
    if (i && !(bounds_[i - 1] < bounds_[i])) fail(this->name() + ": bucket bounds must be strictly increasing");
  }
  if (this->label_names().empty()) labels();
}

histogram& histogram_family::labels(std::initializer_list<std::string_view> values) {
  auto& c = find_or_create(make_key(values), [this] { return std::make_unique<child>(bounds_); });
  return static_cast<child&>(c).value;
}

histogram& histogram_family::labels_of(std::span<const std::string> values) {
  auto& c = find_or_create(make_key(values), [this] { return std::make_unique<child>(bounds_); });
  return static_cast<child&>(c).value;
}

void histogram_family::expose_child(const child_base& cb, const std::string& labels, std::string& out) const {
  auto& h = static_cast<const child&>(cb).value;
  const std::string bucket = name() + "_bucket";
  std::string with_le;
  std::string text;
  std::uint64_t cumulative = 0;
  auto emit_bucket = [&](std::string_view le) {
    with_le = labels;
    if (!with_le.empty()) with_le += ',';
    with_le += "le=\"";
    with_le += le;
    with_le += '"';
    text.clear();
    append_uint(text, cumulative);
    append_sample(out, bucket, with_le, text);
  };
  for (std::size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += h.bucket_count(i);
    emit_bucket(format_value(bounds_[i]));
  }
  cumulative += h.bucket_count(bounds_.size());
  emit_bucket("+Inf");
  append_sample(out, name() + "_sum", labels, format_value(h.sum()));
  text.clear();
  append_uint(text, cumulative);
  append_sample(out, name() + "_count", labels, text);
}

// ------------------------------------------------------------ registry

registry::~registry() = default;

template <class F, class... A>
F& registry::add(A&&... args) {
  auto f = std::make_unique<F>(std::forward<A>(args)...);
  auto& ref = *f;
  std::lock_guard lk(mu_);
  // A histogram's series names (_bucket, _sum, _count) must not meet another family's.
  auto series = [](const detail::family_base& fam) {
    std::vector<std::string> s{fam.name()};
    if (fam.type() == metric_type::histogram)
      for (const char* suffix : {"_bucket", "_sum", "_count"})
        s.push_back(fam.name() + suffix);
    return s;
  };
  auto mine = series(ref);
  for (auto& other : families_)
    for (auto& a : series(*other))
      for (auto& b : mine)
        if (a == b) fail("metric name \"" + b + "\" is registered twice");
  families_.push_back(std::move(f));
  return ref;
}

counter_family& registry::add_counter(std::string name, std::string help, std::vector<std::string> label_names) {
  return add<counter_family>(std::move(name), std::move(help), std::move(label_names));
}

gauge_family& registry::add_gauge(std::string name, std::string help, std::vector<std::string> label_names) {
  return add<gauge_family>(std::move(name), std::move(help), std::move(label_names));
}

histogram_family& registry::add_histogram(std::string name, std::string help, std::vector<std::string> label_names,
                                          std::span<const double> bounds) {
  return add<histogram_family>(std::move(name), std::move(help), std::move(label_names), bounds);
}

void registry::add_collect_hook(std::function<void()> fn) {
  std::lock_guard lk(mu_);
  hooks_.push_back(std::move(fn));
}

std::string registry::expose() const {
  std::vector<const detail::family_base*> families;
  std::vector<std::function<void()>> hooks;
  {
    std::lock_guard lk(mu_);
    families.reserve(families_.size());
    for (auto& f : families_)
      families.push_back(f.get());
    hooks = hooks_;
  }
  {
    std::lock_guard lk(scrape_mu_);
    for (auto& h : hooks) {
      try {
        h();
      } catch (...) {
        // A broken source must not take the whole scrape down.
      }
    }
  }
  std::string out;
  for (auto* f : families)
    f->expose(out);
  return out;
}

} // namespace edgerelay::telemetry
