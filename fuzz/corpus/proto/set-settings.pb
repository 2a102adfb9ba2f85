
node-grace=2s