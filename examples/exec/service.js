// A Node service that must run on one replica only: started when its instance is elected.
const group = process.env.COORDINATOR_GROUP;
const term = process.env.COORDINATOR_TERM;  // the fencing token: pass it to assert_term

process.on("SIGTERM", () => {
  console.log(`service: term ${term} is over, stopping`);
  process.exit(0);
});
console.log(`service: leading ${group} in term ${term}`);
setInterval(() => {}, 1 << 30);  // the service's own work would go here
