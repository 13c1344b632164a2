// The Coldflow seed's JavaScript (fetch) example; tests/test_clients.py replaces only the base URL
// and key. An ES module, as in a browser's <script type="module">, for the top-level await.
const apiKey = 'cfk_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6q7r8s9t0u1v2w3x4y5z6a7b8c9d0e1f2'
const response = await fetch('https://api.coldflow.com/api/sub-agencies', {
  headers: {
    'Authorization': `Bearer ${apiKey}`,
    'Content-Type': 'application/json'
  }
})
const data = await response.json()
console.log(data)
