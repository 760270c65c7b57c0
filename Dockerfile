# One image for the api, the worker and the one-shot migrate (docker-compose.yml
# picks the entry point). Build stage compiles TypeScript; the runtime stage has
# production dependencies, dist/ and the migration .sql files, and runs as `node`.
# test/deploy/compose.test.ts checks that every command here and in compose exists.

FROM node:22-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY api ./api
COPY shared ./shared
COPY worker ./worker
COPY migrations ./migrations
RUN npm run build

FROM node:22-bookworm-slim AS runtime
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
COPY --from=build /app/dist ./dist
# The migration runner reads the .sql files from ../../migrations relative to dist/migrations.
COPY migrations/*.sql ./migrations/
# Pages served only with EXAMPLES=true (the waiting room).
COPY examples ./examples
USER node
EXPOSE 3000 3001
CMD ["node", "dist/api/server.js"]
