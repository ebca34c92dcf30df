#pragma once
// Edits a closed store's LMDB environment directly, to make the states older
// edgerelay versions left behind (tables that did not exist yet).

#include <catch2/catch.hpp>
#include <lmdb.h>

#include <filesystem>
#include <string>

namespace edgerelay::test {

// Drops the table `name` from the environment in `data_dir` and checks it is gone.
inline void drop_store_table(const std::filesystem::path& data_dir, const std::string& name) {
  MDB_env* env = nullptr;
  REQUIRE(mdb_env_create(&env) == MDB_SUCCESS);
  mdb_env_set_maxdbs(env, 64);
  REQUIRE(mdb_env_open(env, data_dir.c_str(), MDB_NOTLS, 0640) == MDB_SUCCESS);
  MDB_txn* t = nullptr;
  REQUIRE(mdb_txn_begin(env, nullptr, 0, &t) == MDB_SUCCESS);
  MDB_dbi dbi;
  REQUIRE(mdb_dbi_open(t, name.c_str(), 0, &dbi) == MDB_SUCCESS);
  REQUIRE(mdb_drop(t, dbi, 1) == MDB_SUCCESS);
  REQUIRE(mdb_txn_commit(t) == MDB_SUCCESS);
  // The table is really gone.
  REQUIRE(mdb_txn_begin(env, nullptr, MDB_RDONLY, &t) == MDB_SUCCESS);
  CHECK(mdb_dbi_open(t, name.c_str(), 0, &dbi) == MDB_NOTFOUND);
  mdb_txn_abort(t);
  mdb_env_close(env);
}

} // namespace edgerelay::test
