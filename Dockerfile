# The one image for the operator and the sidecar: compiled JavaScript (no type stripping at run time:
# ~17 MiB less memory per sidecar, see bench/README.md), production dependencies only, non-root.
#   docker build -t ghcr.io/portcullis-dev/portcullis:0.1.0 .
# The sidecar is the entrypoint (the operator injects it with args only); the chart runs the operator
# with `command: ["portcullis-operator"]`.
FROM node:24-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
# No install scripts: nothing here needs them (the `node` devDependency's download is for npm scripts
# on older machines; this image has Node 24).
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY policy policy
COPY proxy proxy
COPY operator operator
RUN node node_modules/typescript/bin/tsc -p tsconfig.build.json

FROM node:24-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force
COPY --from=build /src/dist ./
RUN chmod +x policy/cli.js proxy/main.js operator/main.js \
  && ln -s /app/policy/cli.js /usr/local/bin/portcullis \
  && ln -s /app/proxy/main.js /usr/local/bin/portcullis-proxy \
  && ln -s /app/operator/main.js /usr/local/bin/portcullis-operator
# The operator's default sidecarUser; the sidecar's securityContext sets it as well.
USER 65532:65532
ENTRYPOINT ["portcullis-proxy"]
