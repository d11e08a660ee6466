/*
 * The addon's entry point: registers every function of NativeBinding (native/binding.ts).
 *
 * Invariants: built against node_api.h with NAPI_VERSION 8 (one binary for Node 20/22/24);
 * the module keeps no global JS state, so it may be loaded by several environments.
 */
#include "exports.h"
#include "values.h"

typedef struct {
  const char *name;
  napi_callback fn;
} export_t;

static const export_t exports_table[] = {
    {"listenUnix", js_listen_unix},
    {"connectUnix", js_connect_unix},
    {"accept", js_accept},
    {"recvmsg", js_recvmsg},
    {"sendmsg", js_sendmsg},
    {"shutdownWrite", js_shutdown_write},
    {"isUnixStreamSocket", js_is_unix_stream_socket},
    {"refuseFdPassing", js_refuse_fd_passing},
    {"sealFdPassing", js_seal_fd_passing},
    {"peerCred", js_peer_cred},
    {"peerPidfd", js_peer_pidfd},
    {"peerGroups", js_peer_groups},
    {"pidfdOpen", js_pidfd_open},
    {"pidfdSendSignal", js_pidfd_send_signal},
    {"prlimit", js_prlimit},
    {"kcmp", js_kcmp},
    {"execve", js_execve},
    {"open", js_open},
    {"memfdCreate", js_memfd_create},
    {"fstat", js_fstat},
    {"dupCloexec", js_dup_cloexec},
    {"setCloexec", js_set_cloexec},
    {"close", js_close},
    {"closeLater", js_close_later},
    {"pendingCloses", js_pending_closes},
    {"pendingClosesOf", js_pending_closes_of},
    {"closeSocketLater", js_close_socket_later},
    {"flock", js_flock},
    {"ioctl", js_ioctl},
    {"startPoll", js_start_poll},
    {"updatePoll", js_update_poll},
    {"stopPoll", js_stop_poll},
    {"sendDatagram", js_send_datagram},
};

static napi_value init(napi_env env, napi_value exports) {
  for (size_t i = 0; i < sizeof exports_table / sizeof exports_table[0]; i++) {
    napi_value fn;
    if (napi_create_function(env, exports_table[i].name, NAPI_AUTO_LENGTH, exports_table[i].fn, NULL, &fn) != napi_ok ||
        napi_set_named_property(env, exports, exports_table[i].name, fn) != napi_ok)
      return napi_failure(env, "module init");
  }
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
