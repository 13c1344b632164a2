// Verify an API key from Node.js with node-postgres. The key is a bind parameter ($1), never part
// of the statement text, so neither the server log nor pg_stat_statements can show it.
//
// Connects with the usual libpq variables (PGHOST, PGPORT, PGUSER, PGDATABASE); reads the key from
// API_KEY. Prints the key's record as JSON, or the refusal (SQLSTATE and message) and exits 1.
'use strict';
const { Client } = require('pg');

async function main() {
  const client = new Client();
  await client.connect();
  try {
    const { rows } = await client.query('SELECT * FROM apikey.verify($1)', [process.env.API_KEY]);
    console.log(JSON.stringify(rows[0]));
  } catch (err) {
    if (!err.code) throw err;
    console.log(JSON.stringify({ sqlstate: err.code, message: err.message }));
    process.exitCode = 1;
  } finally {
    await client.end();
  }
}

main();
