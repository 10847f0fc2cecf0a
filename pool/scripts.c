/* scripts.c - the Lua scripts that make claims and releases atomic.
 *
 * Every key one script touches carries the environment's hash tag {E}, so
 * the pool works on Redis Cluster too. Sandbox hashes are named from the
 * prefix passed in ARGV (same tag), which Cluster accepts in one slot. */
#include "pool/pool_int.h"

#include "lua/pool/scripts.h" /* its Lua scripts: lua/pool/scripts/ (Makefile) */

