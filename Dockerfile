# One image for everything Celer runs on Kubernetes: the node (`celer serve ...`) and the
# operator (`node /app/operator/main.ts`). Build and tag it with the Celer version, which is
# the tag CelerClusters ask for (spec.image defaults to the operator's repository):
#
#   docker build -t celer:0.1.0 .
#
# Stage 1 builds the io_uring addon (dataplane/native) with node-gyp against liburing;
# stage 2 is a slim Node 24 runtime with only production dependencies and liburing's runtime.
# test/e2e/prod-install.test.ts makes the same install from the files the COPY lines name (it
# parses them) and starts a node and the operator from it: keep its steps in step with these.

FROM node:24-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends liburing-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
COPY client/package.json client/package.json
# --ignore-scripts: the addon is built explicitly below, against this image's Node headers.
RUN npm ci --omit=dev --ignore-scripts
COPY bin bin
COPY client client
COPY proto proto
COPY dataplane dataplane
COPY operator operator
RUN cd dataplane/native \
 && rm -rf build \
 && node /usr/local/lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js rebuild --nodedir=/usr/local \
 && node -e "require('./build/Release/celer_io.node'); require('./build/Release/celer_fs.node')" \
 && rm -rf build/Release/obj.target build/Release/.deps

FROM node:24-bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends liburing2 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build /app /app
# `celer` on PATH, as the operator's StatefulSet runs it (command: [celer], args: [serve, ...]):
# bin/celer itself, which runs on the image's node (the pinned Node 24 is a devDependency).
RUN ln -s /app/bin/celer /usr/local/bin/celer \
 && celer --version \
 && mkdir -p /var/lib/celer \
 && chown 65532:65532 /var/lib/celer
# The uid the operator's pod templates and the chart run as.
USER 65532:65532
ENV NODE_ENV=production
# 7400 client, 7401 node HTTP (/status, /metrics), 7402 gRPC, 7403 replication (cluster members),
# 8080 operator metrics.
EXPOSE 7400 7401 7402 7403 8080
CMD ["celer", "serve", "--standalone", "--data-dir", "/var/lib/celer", "--listen", "0.0.0.0:7400", "--http", "0.0.0.0:7401"]
