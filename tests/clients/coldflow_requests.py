# The Coldflow seed's Python (requests) example; tests/test_clients.py replaces only the base URL and key.
import requests

api_key = 'cfk_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6q7r8s9t0u1v2w3x4y5z6a7b8c9d0e1f2'
headers = {
    'Authorization': f'Bearer {api_key}',
    'Content-Type': 'application/json'
}
response = requests.get('https://api.coldflow.com/api/sub-agencies', headers=headers)
data = response.json()
print(data)
