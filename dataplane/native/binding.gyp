{
  # Two addons. celer_fs (flock for the data-directory lock) needs nothing but libc, so it is
  # built even where liburing is missing: hack/build-native.sh then passes --with_uring=0.
  "variables": {
    "with_uring%": 1
  },
  "target_defaults": {
    "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
    "defines": [
      "NAPI_DISABLE_CPP_EXCEPTIONS",
      "NAPI_VERSION=8"
    ],
    "cflags_cc": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
  },
  "targets": [
    {
      "target_name": "celer_fs",
      "sources": ["src/celer_fs.cc"]
    },
    {
      "target_name": "celer_io",
      "conditions": [
        ["with_uring==1", {
          "sources": ["src/celer_io.cc", "src/memory.cc"],
          "libraries": ["-luring"]
        }, {
          "type": "none"
        }]
      ]
    }
  ]
}
