/*
 * The functions module.c exports (one per entry of NativeBinding in native/binding.ts).
 *
 * Invariants: each returns its syscall's result or a negative errno as a JS number (or a
 * result object); it throws only a TypeError for arguments of the wrong type. Every fd it
 * creates is close-on-exec.
 */
#ifndef IOMMUFD_NATIVE_EXPORTS_H
#define IOMMUFD_NATIVE_EXPORTS_H

#include <node_api.h>

#define DECLARE_EXPORT(name) napi_value name(napi_env env, napi_callback_info info)

/* sockets.c */
DECLARE_EXPORT(js_listen_unix);
DECLARE_EXPORT(js_connect_unix);
DECLARE_EXPORT(js_accept);
DECLARE_EXPORT(js_recvmsg);
DECLARE_EXPORT(js_sendmsg);
DECLARE_EXPORT(js_shutdown_write);
DECLARE_EXPORT(js_is_unix_stream_socket);
DECLARE_EXPORT(js_refuse_fd_passing);
DECLARE_EXPORT(js_seal_fd_passing);
/* creds.c */
DECLARE_EXPORT(js_peer_cred);
DECLARE_EXPORT(js_peer_pidfd);
DECLARE_EXPORT(js_peer_groups);
/* process.c */
DECLARE_EXPORT(js_pidfd_open);
DECLARE_EXPORT(js_pidfd_send_signal);
DECLARE_EXPORT(js_prlimit);
DECLARE_EXPORT(js_kcmp);
DECLARE_EXPORT(js_execve);
/* files.c */
DECLARE_EXPORT(js_open);
DECLARE_EXPORT(js_memfd_create);
DECLARE_EXPORT(js_fstat);
DECLARE_EXPORT(js_dup_cloexec);
DECLARE_EXPORT(js_set_cloexec);
DECLARE_EXPORT(js_close);
DECLARE_EXPORT(js_flock);
DECLARE_EXPORT(js_ioctl);
/* closer.c */
DECLARE_EXPORT(js_close_later);
DECLARE_EXPORT(js_pending_closes);
DECLARE_EXPORT(js_pending_closes_of);
DECLARE_EXPORT(js_close_socket_later);
/* poll.c */
DECLARE_EXPORT(js_start_poll);
DECLARE_EXPORT(js_update_poll);
DECLARE_EXPORT(js_stop_poll);
/* notify.c */
DECLARE_EXPORT(js_send_datagram);

#endif
