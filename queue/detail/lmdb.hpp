#pragma once
// A thin RAII layer over LMDB: move-only env, txn and cursor. ~txn() aborts a
// live transaction; commit() releases the handle first, so a failed commit
// never leads to a double free. Values read through these wrappers are views
// into the map, valid only until their transaction ends.

#include <lmdb.h>

#include <cerrno>

#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace edgerelay::queue::detail {

inline MDB_val to_val(std::string_view s) { return MDB_val{s.size(), const_cast<char*>(s.data())}; }
inline std::string_view to_view(const MDB_val& v) { return {static_cast<const char*>(v.mv_data), v.mv_size}; }

class reader_pool;

class txn {
public:
  txn() = default;
  static int begin(MDB_env* env, unsigned flags, txn& out) {
    MDB_txn* t = nullptr;
    int rc = mdb_txn_begin(env, nullptr, flags, &t);
    if (rc == MDB_SUCCESS) out = txn{t};
    return rc;
  }
  explicit txn(MDB_txn* t, reader_pool* pool = nullptr) : t_(t), pool_(pool) {}
  txn(txn&& o) noexcept : t_(std::exchange(o.t_, nullptr)), pool_(std::exchange(o.pool_, nullptr)) {}
  txn& operator=(txn&& o) noexcept {
    if (this != &o) {
      abort();
      t_ = std::exchange(o.t_, nullptr);
      pool_ = std::exchange(o.pool_, nullptr);
    }
    return *this;
  }
  txn(const txn&) = delete;
  txn& operator=(const txn&) = delete;
  ~txn() { abort(); }

  MDB_txn* get() const noexcept { return t_; }
  explicit operator bool() const noexcept { return t_ != nullptr; }
  int commit();
  void abort() noexcept;

  // get: MDB_SUCCESS, MDB_NOTFOUND or an error.
  int get(MDB_dbi dbi, std::string_view key, std::string_view& value) const {
    MDB_val k = to_val(key), v{};
    int rc = mdb_get(t_, dbi, &k, &v);
    if (rc == MDB_SUCCESS) value = to_view(v);
    return rc;
  }
  int put(MDB_dbi dbi, std::string_view key, std::string_view value, unsigned flags = 0) {
    MDB_val k = to_val(key), v = to_val(value);
    return mdb_put(t_, dbi, &k, &v, flags);
  }
  // Reserves space for a value of n bytes and returns where to write it.
  int reserve(MDB_dbi dbi, std::string_view key, std::size_t n, char*& where, unsigned flags = 0) {
    MDB_val k = to_val(key), v{n, nullptr};
    int rc = mdb_put(t_, dbi, &k, &v, flags | MDB_RESERVE);
    if (rc == MDB_SUCCESS) where = static_cast<char*>(v.mv_data);
    return rc;
  }
  int del(MDB_dbi dbi, std::string_view key) {
    MDB_val k = to_val(key);
    return mdb_del(t_, dbi, &k, nullptr);
  }

private:
  MDB_txn* t_ = nullptr;
  reader_pool* pool_ = nullptr; // a read-only txn that goes back to its pool
};

// Read-only transactions that are reset and renewed instead of begun and
// aborted. mdb_txn_begin(MDB_RDONLY) allocates and zeroes a transaction sized
// by the environment's maxdbs (about 250 KB at 4,096), which made every small
// read cost a fresh mmap'd, page-faulted allocation; a renewed one costs a
// reader-slot update. The environment must be opened with MDB_NOTLS (a reset
// txn may be renewed on any thread). clear() before mdb_env_set_mapsize and
// before mdb_env_close.
class reader_pool {
public:
  explicit reader_pool(std::size_t capacity = 16) : cap_(capacity) {}
  reader_pool(const reader_pool&) = delete;
  reader_pool& operator=(const reader_pool&) = delete;
  ~reader_pool() { clear(); }

  int begin(MDB_env* env, txn& out) {
    MDB_txn* t = nullptr;
    {
      std::lock_guard lk(mu_);
      if (!free_.empty()) {
        t = free_.back();
        free_.pop_back();
      }
    }
    if (t) {
      int rc = mdb_txn_renew(t);
      if (rc != MDB_SUCCESS) {
        mdb_txn_abort(t);
        return rc;
      }
    } else if (int rc = mdb_txn_begin(env, nullptr, MDB_RDONLY, &t); rc != MDB_SUCCESS) {
      return rc;
    }
    out = txn{t, this};
    return MDB_SUCCESS;
  }
  void release(MDB_txn* t) noexcept {
    mdb_txn_reset(t);
    {
      std::lock_guard lk(mu_);
      if (free_.size() < cap_) {
        free_.push_back(t);
        return;
      }
    }
    mdb_txn_abort(t);
  }
  void clear() noexcept {
    std::lock_guard lk(mu_);
    for (auto* t : free_)
      mdb_txn_abort(t);
    free_.clear();
  }

private:
  std::mutex mu_;
  std::vector<MDB_txn*> free_;
  std::size_t cap_;
};

inline int txn::commit() {
  if (pool_) { // a read-only txn has nothing to commit
    std::exchange(pool_, nullptr)->release(std::exchange(t_, nullptr));
    return MDB_SUCCESS;
  }
  return mdb_txn_commit(std::exchange(t_, nullptr));
}
inline void txn::abort() noexcept {
  if (!t_) return;
  if (pool_)
    std::exchange(pool_, nullptr)->release(std::exchange(t_, nullptr));
  else
    mdb_txn_abort(std::exchange(t_, nullptr));
}

class cursor {
public:
  cursor() = default;
  static int open(const txn& t, MDB_dbi dbi, cursor& out) {
    MDB_cursor* c = nullptr;
    int rc = mdb_cursor_open(t.get(), dbi, &c);
    if (rc == MDB_SUCCESS) out = cursor{c};
    return rc;
  }
  explicit cursor(MDB_cursor* c) : c_(c) {}
  cursor(cursor&& o) noexcept : c_(std::exchange(o.c_, nullptr)) {}
  cursor& operator=(cursor&& o) noexcept {
    if (this != &o) {
      close();
      c_ = std::exchange(o.c_, nullptr);
    }
    return *this;
  }
  cursor(const cursor&) = delete;
  cursor& operator=(const cursor&) = delete;
  ~cursor() { close(); }
  void close() noexcept {
    if (c_) mdb_cursor_close(std::exchange(c_, nullptr));
  }
  MDB_cursor* get() const noexcept { return c_; }

  int get(std::string_view& key, std::string_view& value, MDB_cursor_op op) {
    MDB_val k = to_val(key), v{};
    int rc = mdb_cursor_get(c_, &k, &v, op);
    if (rc == MDB_SUCCESS) {
      key = to_view(k);
      value = to_view(v);
    }
    return rc;
  }
  int del() { return mdb_cursor_del(c_, 0); }
  // After del() the cursor stands on the next item; when the table became
  // empty LMDB reports the cursor as uninitialised (EINVAL): that is the end.
  int current_after_del(std::string_view& key, std::string_view& value) {
    int rc = get(key, value, MDB_GET_CURRENT);
    return rc == EINVAL ? MDB_NOTFOUND : rc;
  }

private:
  MDB_cursor* c_ = nullptr;
};

inline std::string lmdb_error(int rc) { return mdb_strerror(rc); }

} // namespace edgerelay::queue::detail
