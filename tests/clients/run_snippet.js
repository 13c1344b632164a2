// Runs a snippet read from standard input that uses require() and top-level await together, as
// the Coldflow seed's axios example does: CommonJS has no top-level await and ES modules have no
// require(), so the snippet becomes the body of an async function given this directory's require
// (which finds tests/clients/node_modules).
'use strict';
const fs = require('fs');

const AsyncFunction = (async () => {}).constructor;
new AsyncFunction('require', fs.readFileSync(0, 'utf8'))(require).catch((err) => {
  // Not the error object itself: an axios error carries the request's headers, the key among them.
  const answer = err.response ? ` ${JSON.stringify(err.response.data)}` : '';
  console.error(`${err.name}: ${err.message}${answer}`);
  process.exitCode = 1;
});
