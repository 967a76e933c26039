#!/usr/bin/env node
// Starts @vercel/cosmosdb-server for evalstream's tests, with the fixes listed in
// /work/shared/notes/emulators.md:
//   * HTTP keep-alive: the stock CLI answers every request with `connection: close`, which caps
//     the Python SDK at a few dozen requests per second;
//   * a point GET of a missing document answers 500 (the partition check dereferences the missing
//     document); marking point GETs as cross-partition skips that check and the handler answers
//     404 NotFound, as Cosmos DB does;
//   * transactional batch operations carry no per-operation partition key in azure-cosmos's
//     requests (it sends the key once, as a header), and the server needs it per operation for
//     upsert/replace/delete/read: copy the header into each operation;
//   * `SELECT DISTINCT VALUE …` is a parser error in the server's query library: such a query runs
//     as `SELECT VALUE …` over every match in one page and repeats are dropped, as Cosmos DB does.
//   * a create of a document in a container that does not exist answers 500 (the handler
//     dereferences the missing container): it answers 404 instead, as the server's own upsert
//     does and as Cosmos DB does.
//
// Usage: node cosmos_launcher.js [--port N] [--host 127.0.0.1] [--no-ssl]
// Port and host also come from COSMOS_PORT / COSMOS_HOST; port 0 picks a free port. Prints one
// line "cosmosdb-server ready at https://HOST:PORT/" once it accepts connections.
"use strict";

const path = require("path");

const lib = path.join(__dirname, "node_modules", "@vercel", "cosmosdb-server", "lib");
// The routes table takes each handler's default export when it loads: wrap it before.
const createDocument = require(path.join(lib, "handler", "create-document"));
const createInContainer = createDocument.default;
createDocument.default = async (account, req, res, params) => {
  if (!account.database(params.dbId).collection(params.collId).read()) {
    res.statusCode = 404;
    return {};
  }
  return createInContainer(account, req, res, params);
};
const cosmos = require(lib);
const jsonBody = require(path.join(lib, "json"));

const PARTITION_HEADER = "x-ms-documentdb-partitionkey";
const POINT_DOC_PATH = /^\/+dbs\/[^/]+\/colls\/[^/]+\/docs\/[^/?]+\/?(\?.*)?$/;

function parseArgs(argv) {
  const args = {
    port: parseInt(process.env.COSMOS_PORT || "0", 10),
    host: process.env.COSMOS_HOST || "127.0.0.1",
    ssl: true,
  };
  for (let i = 0; i < argv.length; i += 1) {
    const key = argv[i];
    if (key === "--port" || key === "-p") {
      args.port = parseInt(argv[(i += 1)], 10);
    } else if (key === "--host") {
      args.host = argv[(i += 1)];
    } else if (key === "--no-ssl") {
      args.ssl = false;
    } else {
      throw new Error(`unknown argument: ${key}`);
    }
  }
  if (!Number.isInteger(args.port) || args.port < 0) {
    throw new Error("--port must be a non-negative integer");
  }
  return args;
}

// The batch handler reads its body through this module's default export, looked up at call time,
// so wrapping the export is enough to fill in each operation's partition key.
const readJson = jsonBody.default;
jsonBody.default = async (req) => {
  const body = await readJson(req);
  const header = req.headers[PARTITION_HEADER];
  if (req.headers["x-ms-cosmos-is-batch-request"] && Array.isArray(body) && header) {
    for (const operation of body) {
      if (operation && operation.partitionKey === undefined) {
        operation.partitionKey = header;
      }
    }
  }
  return body;
};

const Items = require(path.join(lib, "account", "items")).default;
const DISTINCT_VALUE = /^(\s*SELECT\s+)DISTINCT\s+(VALUE\s)/i;
const query = Items.prototype.query;
Items.prototype.query = function distinctAware(params, options) {
  if (!params || typeof params.query !== "string" || !DISTINCT_VALUE.test(params.query)) {
    return query.call(this, params, options);
  }
  const plain = { ...params, query: params.query.replace(DISTINCT_VALUE, "$1$2") };
  const page = query.call(this, plain, { ...options, maxItemCount: undefined, continuation: null });
  if (page) {
    const seen = new Set();
    page.result = page.result.filter((value) => {
      const key = JSON.stringify(value);
      return seen.has(key) ? false : (seen.add(key), true);
    });
  }
  return page;
};

function fixRequest(req) {
  if (req.method === "GET" && POINT_DOC_PATH.test(req.url)) {
    req.headers["x-ms-documentdb-query-enablecrosspartition"] = "true";
  }
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  const create = args.ssl ? cosmos.createHttpsServer : cosmos.createHttpServer;
  const server = create({ keepAlive: true });
  // Runs before the library's own request listener, which was registered by createServer.
  server.prependListener("request", fixRequest);
  server.keepAliveTimeout = 30000;
  server.listen(args.port, args.host, () => {
    const { port } = server.address();
    const scheme = args.ssl ? "https" : "http";
    process.stdout.write(`cosmosdb-server ready at ${scheme}://${args.host}:${port}/\n`);
  });
  const stop = () => {
    server.close(() => process.exit(0));
    // Clients may hold keep-alive connections open; do not let them delay the exit.
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main();
