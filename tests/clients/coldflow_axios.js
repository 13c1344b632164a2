// The Coldflow seed's Node.js (axios) example; tests/test_clients.py replaces only the base URL and
// key, and runs it with run_snippet.js (it uses require() and top-level await together).
const axios = require('axios')

const apiKey = 'cfk_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6q7r8s9t0u1v2w3x4y5z6a7b8c9d0e1f2'
const response = await axios.get('https://api.coldflow.com/api/sub-agencies', {
  headers: {
    'Authorization': `Bearer ${apiKey}`
  }
})
console.log(response.data)
