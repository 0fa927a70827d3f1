// An independent admatch client: loads proto/admatch/v1/admatch.proto with @grpc/proto-loader,
// calls RecordEvents and Score on the server given as argv[2], sends a bad request (reading the
// standard google.rpc.BadRequest details of its error with protobufjs) and a ScoreStream with a
// bad message among good ones, and prints one JSON line with what it saw. Exits non-zero on an
// RPC error it did not expect.
import path from "node:path";
import { fileURLToPath } from "node:url";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const protoDir = path.resolve(here, "..", "..", "proto");
// google/rpc/status.proto (ScoreResponse.error) from the google-proto-files package
const googleDir = path.resolve(here, "node_modules", "google-proto-files");
const definition = protoLoader.loadSync("admatch/v1/admatch.proto", {
  includeDirs: [protoDir, googleDir],
  keepCase: true,
  enums: String,
  longs: Number,
  defaults: true,
  oneofs: true,
});
const admatch = grpc.loadPackageDefinition(definition).admatch.v1;
// the standard error details, read from the trailer grpc-status-details-bin
const rpcTypes = new protobuf.Root();
rpcTypes.resolvePath = (_origin, target) => path.join(googleDir, target);
rpcTypes.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], {
  keepCase: true,
});
const Status = rpcTypes.lookupType("google.rpc.Status");
const BadRequest = rpcTypes.lookupType("google.rpc.BadRequest");
const client = new admatch.AdMatching(process.argv[2], grpc.credentials.createInsecure());
const time = { seconds: Math.floor(Date.parse("2026-03-03T12:15:00Z") / 1000), nanos: 0 };

const candidate = (adId, campaign, bid) => ({
  ad_id: adId, campaign_id: campaign, advertiser_id: "adv_" + adId, category: "food",
  format: "FORMAT_IMAGE", duration_s: 10, bid, pricing: "PRICING_CPM",
  suitability_tier: "RATING_GENERAL",
});

const call = (method, request) =>
  new Promise((resolve, reject) =>
    client[method](request, { deadline: Date.now() + 10000 }, (err, reply) =>
      err ? reject(err) : resolve(reply)));

const event = (i) => ({  // impressions 10, 9 and 8 minutes before the request
  type: "TYPE_IMPRESSION", impression_id: "node-" + i,
  time: { seconds: time.seconds - 600 + 60 * i, nanos: 0 }, user_id: "node-user",
  household_id: "node-home", device_id: "node-tv", touchpoint: "TOUCHPOINT_OTT",
  slot: "SLOT_OTT_PAUSE", ad_id: "n1", campaign_id: "node-campaign",
});

const request = (id, bid) => ({
  request_id: id, time, user: { user_id: "node-user", interests: ["food"] },
  household_id: "node-home", device_id: "node-tv", touchpoint: "TOUCHPOINT_OTT",
  slot: "SLOT_OTT_PAUSE", scene: "SCENE_PERSONAL", content_rating: "RATING_GENERAL",
  local_hour: 20,
  candidates: { items: [candidate("n1", "node-campaign", 30), candidate("n2", "other", bid)] },
});

// A refused request: its field violations, as any client reads them.
const violations = async (req) => {
  try {
    await call("Score", req);
  } catch (err) {
    const [raw] = err.metadata.get("grpc-status-details-bin");
    const status = Status.decode(raw);
    const found = status.details
      .filter((d) => d.type_url === "type.googleapis.com/google.rpc.BadRequest")
      .flatMap((d) => BadRequest.decode(d.value).field_violations);
    return { code: err.code, status_code: status.code, fields: found.map((v) => v.field) };
  }
  throw new Error("the bad request was accepted");
};

// A stream of three requests, the middle one bad: three answers, in order.
const streamed = (requests) =>
  new Promise((resolve, reject) => {
    const stream = client.ScoreStream({ deadline: Date.now() + 10000 });
    const answers = [];
    stream.on("data", (r) => answers.push(r));
    stream.on("error", reject);
    stream.on("end", () => resolve(answers));
    requests.forEach((r) => stream.write(r));
    stream.end();
  });

try {
  const recorded = await call("RecordEvents", { events: [0, 1, 2, 2].map(event) });
  const scored = await call("Score", request("node-1", 40));
  const refused = await violations(request("node-bad", -5));
  const bad = { ...request("node-s2", 40), touchpoint: "TOUCHPOINT_UNSPECIFIED" };
  const answers = await streamed([request("node-s1", 40), bad, request("node-s3", 40)]);
  console.log(JSON.stringify({
    recorded: recorded.impressions_recorded, duplicates: recorded.duplicates,
    selected: scored.selected_ad_ids,
    reasons: Object.fromEntries(scored.decisions.map((d) => [d.ad_id, d.reason])),
    model_version: scored.model_version,
    refused,
    stream: answers.map((a) => ({
      request_id: a.request_id, error: a.error ? [a.error.code, a.error.message] : null,
      decisions: a.decisions.length,
    })),
  }));
  client.close();
} catch (err) {
  console.error(`rpc failed: ${err.code} ${err.details} ${err.stack}`);
  process.exit(1);
}
