"""Everything that crosses a boundary: node-to-node frames, their authentication and
controls, record chunks, the backup file, the local API's wire form, the client fast
path's shared layout."""
