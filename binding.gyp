# Builds the native helper (native/src/*.c) into build/Release/iommufd_native.node.
# Plain C on node_api.h, NAPI_VERSION 8: one binary serves Node 20, 22 and 24.
# Build with `npm run build:native` (under npm, node-gyp gets nodedir: no header download).
{
  "targets": [
    {
      "target_name": "iommufd_native",
      "sources": [
        "native/src/module.c",
        "native/src/values.c",
        "native/src/sockets.c",
        "native/src/creds.c",
        "native/src/process.c",
        "native/src/files.c",
        "native/src/closer.c",
        "native/src/poll.c",
        "native/src/notify.c"
      ],
      "defines": ["NAPI_VERSION=8", "_GNU_SOURCE"],
      "cflags!": ["-Wno-unused-parameter"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-Wshadow", "-fvisibility=hidden"]
    }
  ]
}
