{
  "targets": [
    {
      "target_name": "mempool",
      "sources": [
        "native/addon/addon.cc",
        "native/core/heap.cc",
        "native/core/tlsf.cc",
        "native/core/buddy.cc",
        "native/core/bitmap.cc",
        "native/core/debug_heap.cc",
        "native/core/process.cc",
        "native/core/segment.cc",
        "native/core/segment_lock.cc",
        "native/core/directory.cc",
        "native/core/shared_cache.cc",
        "native/core/shared_pool.cc",
        "native/core/sync.cc",
        "native/core/shared_queue.cc",
        "native/core/objects.cc",
        "native/core/raw_segment.cc",
        "native/addon/waiters.cc",
        "native/addon/sync_glue.cc",
        "native/addon/raw_glue.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17", "-std=gnu++14"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-O2", "-Wall", "-Wextra"],
      "libraries": ["-lrt", "-lpthread"]
    }
  ]
}
